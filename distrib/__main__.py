"""What every rank runs (torchrun and srun start this; `distrain train` calls the same functions in place).

    python -m distrib train RUN_DIR/config.toml
    python -m distrib eval CHECKPOINT CONFIG.toml [--json]
"""

import sys

from distrib import workers
from distrib.config import read_run_config


def run(argv: list[str]) -> int:
    if argv[:1] == ["train"] and len(argv) == 2:
        cfg = read_run_config(argv[1])
        workers.start_server(cfg.workers)  # before torch is imported here
        from distrib import train

        train.main(cfg)
        return 0
    if argv[:1] == ["eval"] and len(argv) in (3, 4):
        cfg = read_run_config(argv[2])
        workers.start_server(cfg.workers)  # before torch is imported here
        from distrib import evaluate

        evaluate.main(argv[1], cfg, as_json="--json" in argv[3:])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
