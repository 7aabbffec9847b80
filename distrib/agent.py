"""torchrun, with its ranks forked from it once it has imported torch, torchvision and the training code.

    python -m distrib.agent TORCHRUN_OPTIONS -m distrib train RUN_DIR/config.toml

This is torch.distributed.run itself (`torch.distributed.run.main`): the same options, rendezvous, elastic
agent, restarts, redirects and failure summary. The one difference is how a rank starts: torchrun runs
`python -m distrib ...` as a new interpreter, which imports torch and torchvision again (~4 CPU-s a rank, more
on a shared filesystem); here the agent imports them once and runs the ranks as torchrun's function
entrypoint (torch.distributed.launcher.api.elastic_launch) with `--start-method fork`, so every rank, and
every rank of an elastic restart, starts as a copy of those imports. Only `-m distrib ...` runs this way
(launch/torchrun.py builds the line).
"""

from __future__ import annotations

import signal
import sys

from distrib.runtime import quick_exit

RANK_MODULE = "distrib"


def rank(*argv: str) -> None:
    """One rank, in a process forked from the agent: what `python -m distrib ARGV` runs."""
    from distrib import __main__ as entry

    # The agent's own handlers (torchrun turns these signals into an exception) are not the rank's
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_DFL)
    sys.argv = ["-m", RANK_MODULE, *argv]
    code = entry.main(list(argv))
    if code:  # a function's return value is no exit code: multiprocessing ends the process with this one
        raise SystemExit(code)
    # returning ends the process as multiprocessing ends a forked child: without interpreter teardown


def main(argv: list[str]) -> None:
    import torch
    import torch.distributed.run as torchrun

    from distrib import __main__ as entry

    entry.preload()
    if torch.cuda.is_initialized():  # a forked child cannot use a CUDA context its parent made
        raise SystemExit("distrib.agent: importing the ranks' code initialised CUDA; ranks cannot be forked")

    torchrun_config = torchrun.config_from_args

    def config_from_args(args):
        """torchrun's own config, with the rank as a function instead of `python -m distrib` (its command)."""
        config, _, _ = torchrun_config(args)
        if not (args.module and args.training_script == RANK_MODULE):
            raise SystemExit(f"distrib.agent runs `-m {RANK_MODULE} ...`, not {args.training_script}")
        return config, rank, tuple(args.training_script_args)

    torchrun.config_from_args = config_from_args
    _ranks_leave_when_done()
    try:
        torchrun.main(["--start-method", "fork", *argv])
    except SystemExit as e:
        quick_exit.leave(e.code)
    quick_exit.leave(0)  # a failure (ChildFailedError) ends as torchrun's does: its summary, exit 1


class _NoWait:
    def wait(self, timeout=None) -> bool:
        return True


def _ranks_leave_when_done() -> None:
    """torchrun's function workers put their return value in a pipe, then wait until the agent has read every
    rank's. An agent stopping (SIGTERM from scancel reaches it and the ranks alike) never reads them: each rank,
    already stopped at its step boundary with last.pt written, would wait out torchrun's 30 s before SIGKILL.
    Here a rank leaves once its value is in the pipe (the agent reads it from there as before)."""
    import inspect

    from torch.distributed.elastic.multiprocessing import api

    wrap = api._wrap
    signature = inspect.signature(wrap)
    if "queue_finished_reading_event" not in signature.parameters:
        return  # another torch: its workers wait as it says

    def leave_when_done(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["queue_finished_reading_event"] = _NoWait()
        wrap(*bound.args, **bound.kwargs)

    api._wrap = leave_when_done


if __name__ == "__main__":
    main(sys.argv[1:])
