"""Test-only Hydra callbacks that make one job of a SLURM sweep misbehave, chosen by its topk.

Used by tests/e2e/test_slurm.py through `+hydra.callbacks.<name>._target_=slurm_faults.<Class>` with this directory on PYTHONPATH
(and RUNNER_ALLOW_TARGETS=slurm_faults); never part of the runner.
"""
import time
from pathlib import Path

from hydra.experimental.callback import Callback


class SleepOnTopk(Callback):
    """The job touches `marker` (it is running) and sleeps: the test cancels it mid-run."""

    def __init__(self, topk: int, marker: str, seconds: float = 600) -> None:
        self.topk, self.marker, self.seconds = topk, marker, seconds

    def on_job_start(self, config, **kwargs) -> None:
        if config.topk == self.topk:
            Path(self.marker).touch()
            time.sleep(self.seconds)


class HogOnTopk(Callback):
    """The job fills `gb` GB of memory and holds it: SLURM kills it for exceeding its memory limit."""

    def __init__(self, topk: int, gb: float = 1.5, seconds: float = 600) -> None:
        self.topk, self.gb, self.seconds = topk, gb, seconds

    def on_job_start(self, config, **kwargs) -> None:
        if config.topk == self.topk:
            held = b"\x01" * int(self.gb * 2**30)  # every page written: resident
            time.sleep(self.seconds)
            del held


class SlowOnTopk(Callback):
    """The job's work (runner.job.pipeline.execute) first sleeps `seconds`: it runs into its time limit inside the job."""

    def __init__(self, topk: int, seconds: float = 600) -> None:
        self.topk, self.seconds = topk, seconds

    def on_job_start(self, config, **kwargs) -> None:
        if config.topk == self.topk:
            import runner.job.pipeline

            work = runner.job.pipeline.execute

            def slow(*args, **kw):
                time.sleep(self.seconds)
                return work(*args, **kw)

            runner.job.pipeline.execute = slow
