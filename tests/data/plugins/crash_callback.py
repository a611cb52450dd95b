"""Test-only Hydra callback: kill the job process (os._exit, like an OOM kill) when the job's topk matches.

Used by tests/test_sweeps.py through `+hydra.callbacks.crash._target_=crash_callback.CrashOnTopk` with this directory on
PYTHONPATH; never part of the runner.
"""
import os

from hydra.experimental.callback import Callback


class CrashOnTopk(Callback):
    def __init__(self, topk: int, results_timeout_s: float = 2) -> None:
        self.topk = topk
        try:  # submitit waits 15 s for the result file of a job that died (NFS latency); a test need not
            from submitit.core.core import Job

            Job._results_timeout_s = results_timeout_s
        except ImportError:
            pass

    def on_job_start(self, config, **kwargs) -> None:
        if config.topk == self.topk:
            os._exit(13)
