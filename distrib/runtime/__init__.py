"""The runtime of one rank: its environment, process group, stop signals, hang watchdog, failure records."""
