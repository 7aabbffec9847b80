"""SLURM support: render the sbatch script (pure), submit it, ask for a job's state. Never imports torch."""

from slurm.sbatch import SbatchJob, activate_line, render_sbatch
from slurm.submit import SlurmError, job_state, submit

__all__ = ["SbatchJob", "SlurmError", "activate_line", "job_state", "render_sbatch", "submit"]
