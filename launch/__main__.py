from launch.cli import main

if __name__ == "__main__":  # loader workers start from a fork server, which imports (not runs) __main__
    main()
