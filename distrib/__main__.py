"""What every rank runs (torchrun and srun start this; `distrain train` calls the same functions in place).

    python -m distrib train RUN_DIR/config.toml
    python -m distrib eval CHECKPOINT [--json] [--no-ema] [--report DIR] CONFIG.toml
    python -m distrib predict CHECKPOINT TOPK CONFIG.toml

The run's config.toml is always the last argument; failures are recorded in its folder's logs/.
"""

import os
import sys

from distrib.config import ConfigError, read_run_config
from distrib.data import workers
from distrib.runtime import quick_exit
from distrib.runtime.failure import reported_failures

BAD_INPUT_EXIT = 2


def main(argv: list[str]) -> int:
    """Every failure is recorded for the launcher (one line); bad input exits 2 without a traceback."""
    config = argv[-1] if argv[-1:] and argv[-1].endswith(".toml") else None
    run_dir = os.path.dirname(config) if config else "."
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    try:
        with reported_failures(run_dir, rank):
            return run(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return BAD_INPUT_EXIT


def preload() -> None:
    """Import what the commands below import (torch, torchvision, the training loop, the tools): a torchrun
    agent does it once, and its ranks are forked with them (distrib/agent.py)."""
    from distrib import train  # noqa: F401
    from distrib.tools import evaluate, predict  # noqa: F401


def run(argv: list[str]) -> int:
    if argv[:1] == ["train"] and len(argv) == 2:
        cfg = read_run_config(argv[1])
        workers.start_server(cfg.workers)  # before torch is imported here
        from distrib import train

        train.main(cfg)
        return 0
    if argv[:1] == ["eval"] and 3 <= len(argv) <= 7:
        cfg = read_run_config(argv[-1])
        flags = argv[2:-1]
        report = flags[flags.index("--report") + 1] if "--report" in flags[:-1] else None
        workers.start_server(cfg.workers)  # before torch is imported here
        from distrib.tools import evaluate

        evaluate.main(argv[1], cfg, as_json="--json" in flags, ema="--no-ema" not in flags, report=report)
        return 0
    if argv[:1] == ["predict"] and len(argv) == 4:
        cfg = read_run_config(argv[-1])
        workers.start_server(cfg.workers)  # before torch is imported here
        from distrib.tools import predict

        predict.main(argv[1], int(argv[2]), cfg)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    quick_exit.leave(main(sys.argv[1:]))  # an exception still ends as usual: traceback, teardown, exit 1
