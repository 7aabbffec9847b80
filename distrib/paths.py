"""Every file of a run directory, named once (torch-free: launch/ and slurm/ use it too)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class RunPaths:
    root: str

    def _at(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def config(self) -> str:
        return self._at("config.toml")        # the resolved config every rank reads

    @property
    def launch_record(self) -> str:
        return self._at("launch.json")        # what was launched: command lines, hosts, versions, job id

    @property
    def metrics(self) -> str:
        return self._at("metrics.jsonl")      # one JSON object per finished epoch

    @property
    def tb(self) -> str:
        return self._at("tb")                 # TensorBoard events (global rank 0 only)

    @property
    def checkpoints(self) -> str:
        return self._at("checkpoints")

    @property
    def last(self) -> str:
        return self._at("checkpoints", "last.pt")

    @property
    def best(self) -> str:
        return self._at("checkpoints", "best.pt")

    @property
    def logs(self) -> str:
        return self._at("logs")

    def rank_log(self, rank: int) -> str:
        return self._at("logs", f"rank{rank}.log")

    @property
    def torchrun_logs(self) -> str:
        return self._at("logs", "torchrun")

    @property
    def torchrun_err(self) -> str:
        return self._at("logs", "torchrun.err")   # torchrun's own stderr (its failure dump)

    def slurm_log(self, job_id: str) -> str:
        return self._at("logs", f"slurm-{job_id}.out")  # the batch step's output (sbatch --output)

    @property
    def slurm_logs(self) -> str:
        return self._at("logs", "slurm-*.out")    # a glob: every job's output

    # --- a rank's failure record (distrib/runtime/failure.py): the launcher shows its one line
    FAILURE_PREFIX = "failure.rank"

    def failure(self, rank: int) -> str:
        return self._at("logs", f"{self.FAILURE_PREFIX}{rank}.json")

    def traceback(self, rank: int) -> str:
        return self._at("logs", f"traceback.rank{rank}.txt")

    # --- a hang's evidence (distrib/runtime/hangs.py says what each file holds)
    @property
    def hangs(self) -> str:
        return self._at("logs", "hang")

    def hang_stack(self, rank: int, host: str, attempt: int) -> str:
        return self._at("logs", "hang", f"rank{rank}-{host}-attempt{attempt}.stack")

    def hang_traces(self, attempt: int) -> str:
        """The Flight Recorder traces of one attempt's ranks, one file each (`rank{R}`): the folder layout
        `python -m torch.distributed.flight_recorder.fr_trace FOLDER` reads."""
        return self._at("logs", "hang", f"flight-recorder-attempt{attempt}")

    def hang_trace(self, rank: int, attempt: int) -> str:
        return os.path.join(self.hang_traces(attempt), f"rank{rank}")

    @property
    def hang_explanation(self) -> str:
        return self._at("logs", "hang", "hung.txt")

    @property
    def nccl_trace_prefix(self) -> str:
        return self._at("logs", "hang", "nccl-trace-rank")  # NCCL appends the rank (TORCH_NCCL_DEBUG_INFO_TEMP_FILE)

    # --- `--profile START:STEPS` (distrib/report/profile.py)
    @property
    def profile(self) -> str:
        return self._at("profile")

    def profile_trace(self, rank: int) -> str:
        return self._at("profile", f"rank{rank}-trace.json")   # Chrome trace JSON: ui.perfetto.dev opens it

    def profile_table(self, rank: int) -> str:
        return self._at("profile", f"rank{rank}-top.txt")      # the top operators and the data-wait share

    @property
    def stop(self) -> str:
        return self._at("STOP")               # touched to stop every rank at the next step boundary

    @property
    def sbatch(self) -> str:
        return self._at("job.sbatch")

    @property
    def export(self) -> str:
        return self._at("export")             # where `distrain status` suggests exporting to

    @property
    def position(self) -> str:
        return self._at("position.json")      # where the newest checkpoint is: epoch, batch, of how many

    @property
    def live(self) -> str:
        return self._at("live.json")          # rank 0's newest step-level figures (every --log-interval steps)

    @property
    def outcome(self) -> str:
        return self._at("outcome.json")       # how the last attempt ended: finished, stopped or failed

    # --- `distrain predict`'s scratch run dir
    @property
    def predict_inputs(self) -> str:
        return self._at("predict-inputs.json")    # the image paths, in input order (the launcher writes it)

    def predictions(self, rank: int) -> str:
        return self._at("predictions", f"rank{rank}.jsonl")  # this rank's rows, for its contiguous slice
