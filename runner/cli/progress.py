"""Sweep-level progress: one line when a job starts and one when it ends, with i/N, the sweep's elapsed time and an
ETA, printed (with or without a terminal: SLURM and nohup logs get them too) and appended to <sweep dir>/sweep.log.
The per-job bar (tqdm, terminals only) is the job's own (runner/job/pipeline.py). Called by the sweep callback
(runner/cli/callbacks.py) from Hydra's on_job_start / on_job_end, in whichever process runs the job.

The ETA is the mean time per finished job so far times the jobs left, counting the jobs before this one as
finished: exact bookkeeping for the basic launcher (one job after another), an estimate for parallel launchers."""
from __future__ import annotations

import contextlib
import datetime as dt
import time
from pathlib import Path
from typing import Any

LOG_NAME = "sweep.log"


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def elapsed_since(started: str | None) -> float | None:
    try:
        return (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(str(started))).total_seconds()
    except (TypeError, ValueError):
        return None


def eta(elapsed: float | None, done: int, total: int | None) -> float | None:
    if elapsed is None or not total or done <= 0:
        return None
    return elapsed / done * max(total - done, 0)


def job_line(state: dict[str, Any], job_num: int, event: str) -> str:
    """`sweep: job 3/12 <event> | elapsed 0:00:04, ETA 0:00:12`; `done` counts the jobs finished after this event."""
    total = len(state["planned"]) if state.get("planned") is not None else None
    done = job_num + (0 if event.startswith("started") else 1)
    elapsed = elapsed_since(state.get("started"))
    of = f"{job_num + 1}/{total}" if total else f"{job_num + 1}"
    return f"sweep: job {of} {event} | elapsed {clock(elapsed)}, ETA {clock(eta(elapsed, done, total))}"


def report(state: dict[str, Any], line: str) -> None:
    print(line, flush=True)
    with contextlib.suppress(OSError):  # the log copy never stops a sweep
        with open(Path(state["sweep_dir"]) / LOG_NAME, "a", encoding="utf-8") as log:
            log.write(f"{dt.datetime.now().astimezone().isoformat(timespec='seconds')} {line}\n")


def swept(overrides: list[str], planned: list[list[str]] | None) -> list[str]:
    """The job's overrides of the keys that differ between the planned jobs (all of them when the plan is unknown):
    `topk=2 selector=kneedle`, not the out_root every job shares."""
    if not planned:
        return overrides
    values: dict[str, set[str]] = {}
    for job in planned:
        for override in job:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return [o for o in overrides if len(values.get(o.partition("=")[0], ())) > 1]


class JobClock:
    """Start times of the jobs this process ran, for the duration on the `ended` line."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}

    def start(self, state: dict[str, Any], job_num: int, overrides: list[str]) -> None:
        self.started[job_num] = time.perf_counter()
        shown = swept(overrides, state.get("planned"))
        report(state, job_line(state, job_num, "started: " + (" ".join(shown) or "(no overrides)")))

    def end(self, state: dict[str, Any], job_num: int, status: str) -> None:
        began = self.started.pop(job_num, None)
        took = f" in {time.perf_counter() - began:.1f} s" if began is not None else ""
        report(state, job_line(state, job_num, f"{status}{took}"))
