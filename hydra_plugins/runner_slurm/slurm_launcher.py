"""The launcher of the `hydra/launcher=slurm` and `slurm_cpu` presets: hydra-submitit-launcher's SLURM launcher plus

* resume=true: the jobs whose config already has an `ok` row run here (each writes its `skipped` row in a second) and
  only the others are queued;
* the array is followed with squeue (runner.slurm.follow), each job's SLURM id and state changes logged;
* a job SLURM ended without a result (scancel, memory or time limit, node failure) gets a `failed` row whose error
  names the SLURM state; the launcher returns normally, so the sweep summary runs, lists it and exits 1;
* in the job, SLURM's USR2 (signal_delay_s before the time limit) makes the job record itself as failed with a
  TimeLimit error (submitit would raise `UncompletedJobError: ... timed-out too many times` wherever the job was);
  on a preemption the job is requeued and starts over, as submitit does.

Hydra loads launchers only from the hydra_plugins package, hence this file; the logic is in runner/slurm/.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf, open_dict


class SlurmLauncher(SubmititSlurmLauncher):
    """SLURM array jobs that are followed, logged and recorded (docs/slurm.md)."""

    # -- in the job ---------------------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._started = time.time()  # for checkpoint(): a time limit or a preemption
        return super().__call__(*args, **kwargs)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit in the job when SLURM sends USR2: near the time limit, raise TimeLimit (the job records
        it as its failed row); on a preemption (or with max_num_timeout > 0), requeue as submitit does."""
        from runner import slurm

        started = getattr(self, "_started", None)
        if started is not None and not self.params.get("max_num_timeout") and \
                slurm.near_time_limit(started, self.params.get("timeout_min") or 0):
            raise slurm.time_limit_error(self.params.get("timeout_min"), self.params.get("signal_delay_s"))
        return super().checkpoint(*args, **kwargs)

    # -- on the submitting host -----------------------------------------------------------------------------------------

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides

        from runner import slurm

        assert self.config is not None and self.hydra_context is not None
        cwd = OmegaConf.select(self.config, "hydra.runtime.cwd") or os.getcwd()
        sweep_dir = slurm.absolute(str(self.config.hydra.sweep.dir), cwd)
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        handler = slurm.log_to(Path(sweep_dir) / "slurm.log")
        try:
            singletons = Singleton.get_state()
            jobs = [(initial_job_idx + i, list(overrides)) for i, overrides in enumerate(job_overrides)]
            returns: dict[int, Any] = {}
            done = self._with_results(jobs, cwd)
            if done:
                slurm.log.info("resume: %d of %d jobs already have an ok row in results_dir; they are recorded as "
                               "skipped here, the other %d go to SLURM", len(done), len(jobs), len(jobs) - len(done))
                returns.update(self._run_here([job for job in jobs if job[0] in done]))
            todo = [job for job in jobs if job[0] not in returns]
            if todo:
                slurm.notice_accounting()
                executor = slurm.executor(self.params, str(self.params["submitit_folder"]))
                submitted = executor.map_array(self, *zip(*[(overrides, "hydra.sweep.dir", num, f"job_id_for_{num}",
                                                             singletons) for num, overrides in todo]))
                entries = [slurm.Tracked(num, overrides, job) for (num, overrides), job in zip(todo, submitted)]
                array = entries[0].slurm_id.split("_")[0]
                slurm.log.info("submitted %d job(s) to SLURM as array %s (at most %s running at once); sweep dir %s",
                               len(entries), array, self.params.get("array_parallelism"), sweep_dir)
                for e in entries:
                    slurm.log.info("  %s: %s", e.label(), " ".join(filter_overrides(e.overrides)))
                try:
                    slurm.follow(entries)
                except KeyboardInterrupt:
                    print(f"runner: the SLURM jobs keep running (`scancel {array}` stops them); run the same command "
                          "with resume=true later to record what they did", file=sys.__stderr__, flush=True)
                    raise
                returns.update(self._outcomes(entries, sweep_dir, cwd))
            return [returns[num] for num, _ in jobs]
        finally:
            slurm.log.removeHandler(handler)
            handler.close()

    # -- resume -----------------------------------------------------------------------------------------------------
    def _with_results(self, jobs: list[tuple[int, list[str]]], cwd: str) -> set[int]:
        """With resume=true: the job numbers whose resolved config already has an ok row (as the job would find)."""
        if not OmegaConf.select(self.config, "resume", default=False):
            return set()
        from hydra.core.hydra_config import HydraConfig

        from runner import results, slurm
        from runner.config.identity import config_hash

        found = set()
        for num, overrides in jobs:
            try:
                config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
                HydraConfig.instance().set_config(config)
                task = config.copy()
                with open_dict(task):
                    del task["hydra"]
                if task.get("resume") and results.find_ok(slurm.absolute(str(task.results_dir), cwd),
                                                          config_hash(task)) is not None:
                    found.add(num)
            except Exception as exc:  # noqa: BLE001 - a job that cannot be checked here runs on SLURM and says why
                slurm.log.debug("resume check of job %d: %s", num, exc)
        return found

    def _run_here(self, jobs: list[tuple[int, list[str]]]) -> dict[int, Any]:
        """Jobs that only write their `skipped` row run in this process, as the basic launcher runs jobs."""
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher
        from hydra.core.utils import configure_log

        basic = BasicLauncher()
        basic.setup(hydra_context=self.hydra_context, task_function=self.task_function, config=self.config)
        chatty = logging.getLogger(BasicLauncher.__module__)  # "Launching 1 jobs locally", once per job
        level = chatty.level
        chatty.setLevel(logging.WARNING)
        try:
            return {num: basic.launch([overrides], initial_job_idx=num)[0] for num, overrides in jobs}
        finally:
            chatty.setLevel(level)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # each job set its logging

    # -- outcomes ---------------------------------------------------------------------------------------------------
    def _outcomes(self, entries: list, sweep_dir: str, cwd: str) -> dict[int, Any]:
        """Each job's JobReturn: its own from the result file, or a `failed` one (and row) for a job SLURM ended."""
        from hydra.core.utils import JobReturn, JobStatus

        from runner import slurm

        returns, lost = {}, []
        for e in entries:
            if e.final == "result":
                try:
                    returns[e.num] = e.job.results()[0]
                    continue
                except Exception as exc:  # noqa: BLE001 - the job raised outside the task function (submitit's trace)
                    parts = str(exc).split("-" * 22)  # submitit: message, ----, the trace, ----, where the logs are
                    trace = [line for line in (parts[1] if len(parts) > 2 else str(exc)).splitlines() if line.strip()]
                    lost.append((e, f"SLURM job {e.slurm_id} raised before recording a result: "
                                    f"{' '.join((trace[-1] if trace else type(exc).__name__).split())[:300]}"))
            else:
                slurm.settle(e)
                lost.append((e, slurm.lost_error(e)))
        results_dir = slurm.absolute(str(self.config.results_dir), cwd)
        recorded = slurm.recorded(results_dir, sweep_dir) if lost else set()
        for e, error in lost:
            slurm.log.warning("%s: %s", e.label(), error)
            if e.num not in recorded:  # a job that wrote its own row before it died keeps it
                try:
                    config = self.hydra_context.config_loader.load_sweep_config(self.config, e.overrides)
                except Exception:  # noqa: BLE001 - the row still says which job it was
                    config = self.config
                slurm.record_lost(results_dir, sweep_dir, e.num, e.overrides, config, error, e.slurm_id)
            returns[e.num] = JobReturn(overrides=e.overrides, status=JobStatus.COMPLETED,
                                       _return_value=dict(status="failed", error=error, slurm_job_id=e.slurm_id))
        return returns
