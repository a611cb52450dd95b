"""Hydra callback: at the end of a multirun, one combined table and a one-screen summary per sweep.

This module is the Hydra glue only: the summary table and its rendering are runner/results/summaries.py.

on_multirun_start (launching process): works out the planned job list (basic sweeper), writes <sweep>/sweep.json.
on_job_start / on_job_end (the job's process): a progress line each, i/N, elapsed and ETA (runner/cli/progress.py).
on_multirun_end: rows of this sweep from results_dir/table=runs -> <sweep>/summary.parquet; prints k vs FLOPs/token vs
loss per model and the failed jobs; a planned job with no row (its process died: os._exit, OOM kill, timeout) gets a
`failed` row; exits 1 when anything failed. When a launcher raises (Hydra 1.3 then skips on_multirun_end) the same
work runs from an atexit hook, so the summary and the failure rows are never lost. Then, with `report=true`, the
HTML report (runner/report/) and its path as the last line; a report that fails is one warning line.
"""
from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..errors import one_line
from .progress import JobClock

log = logging.getLogger(__name__)

LOST = "job process ended without recording a result (hard crash, OOM kill or timeout?)"


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """The job override lists the basic sweeper will launch, in job-number order (None for other sweepers)."""
    target = OmegaConf.select(config, "hydra.sweeper._target_") or ""
    if not target.endswith("BasicSweeper"):
        return None
    try:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from .hydra_internals import sweep_batches

        def unresolved(key: str) -> Any:  # `${oc.env:...}` stays as written (a lost job's row stores it)
            node = OmegaConf.select(config, key, default=None)
            return OmegaConf.to_container(node, resolve=False) if node is not None else None

        params = unresolved("hydra.sweeper.params") or {}
        arguments = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in unresolved("hydra.overrides.task") or []]
        loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
        batches = sweep_batches(parsed, OmegaConf.select(config, "hydra.sweeper.max_batch_size"))
        return [list(job) for batch in batches for job in batch]
    except Exception as exc:  # noqa: BLE001 - the plan is a convenience; job dirs are the fallback
        log.warning("could not work out the planned jobs: %s", exc)
        return None


class SweepSummary(Callback):
    def __init__(self, print_summary: bool = True, exit_on_failure: bool = True) -> None:
        self.print_summary = print_summary
        self.exit_on_failure = exit_on_failure
        self._state: dict[str, Any] | None = None
        self._clock = JobClock()

    # -- Hydra hooks ---------------------------------------------------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # import now what finish() needs: it may run from atexit, when new imports can no longer register exit hooks
        import pandas  # noqa: F401
        import pyarrow.dataset  # noqa: F401
        import pyarrow.parquet  # noqa: F401

        from ..results import provenance
        from .. import results  # noqa: F401
        from ..results import sweep_id_for

        provenance.provenance()

        cwd = OmegaConf.select(config, "hydra.runtime.cwd") or str(Path.cwd())
        sweep_dir = _absolute(str(config.hydra.sweep.dir), cwd)
        state = dict(sweep_dir=sweep_dir, sweep_id=sweep_id_for(sweep_dir),
                     results_dir=_absolute(str(config.results_dir), cwd), planned=planned_jobs(config),
                     model=str(OmegaConf.select(config, "model.name") or "unknown"),
                     defaults={k: _select(config, path) for k, path in (("selector", "selector.name"),
                                                                         ("dataset", "dataset.name"), ("topk", "topk"))},
                     done=False, report=bool(_select(config, "report")),
                     started=dt.datetime.now(dt.timezone.utc).isoformat())
        self._state = state
        try:
            Path(sweep_dir).mkdir(parents=True, exist_ok=True)
            (Path(sweep_dir) / "sweep.json").write_text(json.dumps(
                {k: state[k] for k in ("sweep_id", "sweep_dir", "results_dir", "planned", "started")}, indent=1))
        except OSError as exc:
            log.warning("could not write sweep.json: %s", exc)
        atexit.register(self._at_exit, state)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        job_num = _select(config, "hydra.job.num")
        if self._state is not None and job_num is not None:  # a multirun's job (single runs have no state)
            self._clock.start(self._state, int(job_num), list(_select(config, "hydra.overrides.task") or []))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        job_num = _select(config, "hydra.job.num")
        if self._state is None or job_num is None:
            return
        from hydra.core.utils import JobStatus

        status = "crashed"
        if job_return.status == JobStatus.COMPLETED:
            value = job_return.return_value
            status = str(value.get("status", "ok")) if isinstance(value, dict) else "ok"
        self._clock.end(self._state, int(job_num), status)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._state is None or self._state["done"]:
            return
        try:
            failed = self.finish(self._state)
        except Exception as exc:  # noqa: BLE001 - Hydra would only log a callback's exception and exit 0
            print(f"runner: error: sweep summary failed: {type(exc).__name__}: {one_line(exc, 300)}",
                  file=sys.stderr, flush=True)
            sys.exit(1)
        if failed and self.exit_on_failure:
            sys.exit(1)

    def _at_exit(self, state: dict[str, Any]) -> None:
        from ..errors import INTERRUPT

        if INTERRUPT["requested"]:  # Ctrl-C: the running job recorded itself; the rest never started
            state["done"] = True
            return
        if not state["done"]:  # the launcher raised: Hydra 1.3 skipped on_multirun_end
            try:
                self.finish(state)
            except Exception as exc:  # noqa: BLE001
                print(f"runner: sweep summary failed: {exc}", file=sys.stderr)

    # -- work ------------------------------------------------------------------------------------------------------------
    def finish(self, state: dict[str, Any]) -> int:
        """Record lost jobs, write summary.parquet, print the summary. Returns the number of failed jobs."""
        from ..results import combine, render, sweep_runs

        state["done"] = True
        runs = sweep_runs(state["results_dir"], state["sweep_id"])
        lost = self._record_lost(state, runs)
        if lost:
            runs = sweep_runs(state["results_dir"], state["sweep_id"])
        summary = combine(runs, state["results_dir"])
        path = Path(state["sweep_dir"]) / "summary.parquet"
        try:
            summary.to_parquet(path, index=False)
        except OSError as exc:
            log.error("could not write %s: %s", path, exc)
        failed = int((summary["status"] == "failed").sum()) if len(summary) else 0
        if self.print_summary:
            print(render(summary, state, path), flush=True)
        if state.get("report") and len(summary):
            self._report(state, summary)
        return failed

    def _report(self, state: dict[str, Any], summary) -> None:
        """The sweep's HTML report, its path as the last line; a failure is one warning, the summary stands."""
        start = time.perf_counter()
        try:
            from ..report import write_report
            from ..results.select import Selection

            sweep_dir = Path(state["sweep_dir"])
            selection = Selection(summary, Path(state["results_dir"]), f"sweep {state['sweep_id']} ({sweep_dir})",
                                  sweep_dir / "report")
            path = write_report(selection)
            print(f"report: {path} ({time.perf_counter() - start:.1f} s)", flush=True)
        except Exception as exc:  # noqa: BLE001 - the report is a view of the results, which are safe already
            print(f"runner: warning: report not written: {type(exc).__name__}: {one_line(exc, 300)}; "
                  f"retry with python -m runner.report {state['sweep_dir']}", file=sys.stderr, flush=True)

    def _record_lost(self, state: dict[str, Any], runs) -> int:
        from .. import results

        seen = {int(n) for n in runs["job_num"].dropna()} if len(runs) else set()
        jobs: dict[int, list[str]] = {}
        for num, overrides in enumerate(state["planned"] or []):
            jobs[num] = overrides
        sweep_dir = Path(state["sweep_dir"])
        if sweep_dir.is_dir():  # jobs Hydra started (their .hydra/ exists), in case the plan is unknown
            for child in sweep_dir.iterdir():
                if child.name.isdigit() and (child / ".hydra" / "overrides.yaml").is_file() and int(child.name) not in jobs:
                    jobs[int(child.name)] = list(OmegaConf.load(child / ".hydra" / "overrides.yaml"))
        lost = 0
        for num, overrides in sorted(jobs.items()):
            if num in seen:
                continue
            values = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith(("+", "~")))
            model = values.get("model", state["model"]).split(",")[0]
            # the sweep's default top-k is the default model's: another model's job has its own (unknown here)
            same_model = model == state["model"]
            topk = values.get("topk", str(state["defaults"].get("topk")) if same_model else None)
            row = results.RunRecord.lost(
                state["sweep_id"], state["sweep_dir"], num, overrides, LOST,
                topk=int(topk) if topk and topk.isdigit() else None,
                selector=values.get("selector", values.get("selector.name", state["defaults"].get("selector"))),
                dataset=values.get("dataset", values.get("dataset.name", state["defaults"].get("dataset"))))
            try:
                results.write_part(state["results_dir"], "runs", model, [row], None, row.run_id)
                lost += 1
            except Exception as exc:  # noqa: BLE001
                log.error("could not record lost job %d: %s", num, exc)
        return lost


def _select(config: DictConfig, path: str) -> Any:
    try:
        return OmegaConf.select(config, path)
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve here
        return None


def _absolute(path: str, cwd: str) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(cwd) / p)
