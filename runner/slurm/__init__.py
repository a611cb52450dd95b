"""SLURM sweeps (docs/slurm.md). `cluster.py`: asking SLURM, the running job's id, time limits, and `ClusterCheck`,
a Hydra callback the `slurm` and `slurm_cpu` presets put first, which checks the request against the cluster
(scontrol, then `sbatch --test-only`) and stops the sweep with one line when the jobs could not run or would pend
forever. `jobs.py`: following an array with squeue (sacct needs accounting, which many clusters do not run), logging
each job's SLURM id and state changes, and the `failed` row of a job SLURM ended without a result.

The launcher itself is hydra_plugins/runner_slurm/slurm_launcher.py (Hydra takes launchers only from the
hydra_plugins package). Nothing here imports submitit or torch at import time.
"""
import logging

from .cluster import (ClusterCheck, ClusterError, TimeLimit, accounting, check, executor, job_id, near_time_limit,
                      slurm, time_limit_error)
from .jobs import (Tracked, absolute, follow, log_to, lost_error, notice_accounting, poll_interval, record_lost,
                   recorded, sacct_state, settle, squeue)

log = logging.getLogger(__name__)  # the parent of cluster's and jobs' loggers: the launcher logs here too

__all__ = ["ClusterCheck", "ClusterError", "TimeLimit", "Tracked", "absolute", "accounting", "check", "executor",
           "follow", "job_id", "log_to", "lost_error", "near_time_limit", "notice_accounting", "poll_interval",
           "record_lost", "recorded", "sacct_state", "settle", "slurm", "squeue", "time_limit_error"]
