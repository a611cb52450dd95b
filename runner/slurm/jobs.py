"""Following a submitted array: squeue polls, state changes logged, and the `failed` row of a job SLURM ended
without a result (error_type LostJob, the SLURM state in its error)."""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import RunnerError
from .cluster import ACTIVE, NEVER_SEEN_S, NEVER_STARTS, RESULT_WAIT_S, WAITING, ClusterError, accounting, slurm

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Following the array
@dataclass
class Tracked:
    """One submitted job: Hydra's job number, the submitit job, what squeue last said."""
    num: int
    overrides: list[str]
    job: Any  # submitit.slurm.slurm.SlurmJob
    state: str | None = None
    reason: str | None = None
    ended: float | None = None  # when squeue first showed a final state (or stopped listing the job)
    gone: bool = False  # squeue no longer lists it
    final: str | None = None  # "result" (a result file) or "lost"

    @property
    def slurm_id(self) -> str:
        return str(self.job.job_id)

    def label(self) -> str:
        return f"job {self.num} (SLURM {self.slurm_id})"


def squeue(array_ids: set[str]) -> dict[str, tuple[str, str, str]]:
    """`<array>_<task>` -> (state, reason, nodes) of every task slurmctld still knows (it forgets a job MinJobAge after
    it ends). ClusterError when squeue cannot answer."""
    try:
        out = slurm("squeue", "--noheader", "--array", "--states=all", "--jobs", ",".join(sorted(array_ids)),
                    "--format=%i|%T|%r|%N")
    except ClusterError as exc:
        if "Invalid job id" in str(exc):  # every task is forgotten already
            return {}
        raise
    table = {}
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 4:
            table[fields[0]] = (fields[1], fields[2], fields[3])
    return table


def sacct_state(slurm_id: str) -> tuple[str, str] | None:
    """(state, exit code) from accounting, for a job squeue has forgotten; None without accounting."""
    try:
        out = slurm("sacct", "--noheader", "--parsable2", "--allocations", "--jobs", slurm_id,
                    "--format=JobID,State,ExitCode")
    except ClusterError:
        return None
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) == 3 and fields[0] == slurm_id:
            return fields[1], fields[2]
    return None


def settle(entry: Tracked) -> None:
    """A job squeue stopped listing before its end was seen: its final state from accounting, where there is one."""
    try:
        if not entry.gone or accounting() is None:
            return
    except ClusterError:
        return
    found = sacct_state(entry.slurm_id)
    if found:
        entry.state, entry.reason, entry.gone = found[0].split()[0], None, False


def _stepd_line(path: Path) -> str | None:
    """What slurmstepd wrote into the job's log when it ended the job: a memory-limit kill first, else the
    `*** JOB 12 ON node CANCELLED AT ... ***` line."""
    try:
        text = path.read_text(errors="replace")[-20000:]
    except OSError:
        return None
    lines = [line.split("error:", 1)[-1].strip() for line in text.splitlines() if line.startswith("slurmstepd")]
    memory = [line for line in lines if "memory" in line.lower() or "oom" in line.lower()]
    ended = [line for line in lines if line.startswith("***")]
    line = (memory or ended or [None])[0]
    return line and re.sub(r"\((\d+) > (\d+)\)",  # bytes used > limit
                           lambda m: f"({int(m[1]) / 2**30:.2f} GB > {int(m[2]) / 2**30:.2f} GB)", line)


def lost_error(entry: Tracked, detail: str | None = None) -> str:
    """The `error` of a job SLURM ended without a result: the SLURM id and state, slurmstepd's reason, what to do."""
    state = entry.state or "UNKNOWN"
    if entry.gone and entry.state in (None, "PENDING"):
        what = f"SLURM job {entry.slurm_id} left the queue before it started (cancelled?)"
    elif entry.gone and entry.state in ACTIVE:
        what = f"SLURM job {entry.slurm_id} left the queue (last seen {state}; its end state is not known without " \
               "accounting)"
    else:
        what = f"SLURM job {entry.slurm_id} ended {state}"
        if entry.reason not in WAITING and entry.reason is not None:
            what += f" ({entry.reason})"
    detail = detail or _stepd_line(Path(entry.job.paths.stderr))
    text = f"{what} without recording a result" + (f": {detail}" if detail else "")
    said = f"{state} {detail or ''}".upper()
    if "MEMORY" in said or "OOM" in said:
        text += "; raise hydra.launcher.mem_gb"
    elif "TIMEOUT" in said or "TIME LIMIT" in said:
        text += "; raise hydra.launcher.timeout_min"
    return text + "; resume=true runs it again"


def poll_interval(elapsed: float) -> float:
    """Seconds between two squeue calls: 2 s for a short sweep, up to 30 s for one that runs for hours."""
    return min(30.0, max(2.0, elapsed / 20))


def follow(entries: list[Tracked]) -> None:
    """Poll squeue until every job has a result file or a final state; log each state change."""
    start = time.monotonic()
    arrays = {e.slurm_id.split("_")[0] for e in entries}
    outage = None
    warned: set[str] = set()  # pending reasons already explained
    while any(e.final is None for e in entries):
        try:
            table = squeue(arrays)
            if outage is not None:
                log.info("squeue answers again after %.0f s", time.monotonic() - outage)
                outage = None
        except ClusterError as exc:
            if outage is None:
                outage = time.monotonic()
                log.warning("squeue failed (%s); the jobs are not affected, asking again every few seconds", exc)
            table = None
        now = time.monotonic()
        for e in entries:
            if e.final is not None:
                continue
            if Path(e.job.paths.result_pickle).exists():
                e.final = "result"
                if e.state != "COMPLETED":
                    log.info("%s: %s", e.label(), "finished" if e.state in (None, "RUNNING", "COMPLETING")
                             else f"finished ({e.state})")
                continue
            if table is None:
                continue
            row = table.get(e.slurm_id)
            if row is not None:
                _observe(e, *row, now, warned)
            elif e.state is not None or now - start > NEVER_SEEN_S:
                e.gone = True
                e.ended = e.ended or now
            if e.ended is not None and now - e.ended > RESULT_WAIT_S:  # its result file, if any, had time to show
                e.final = "lost"
        if any(e.final is None for e in entries):
            time.sleep(poll_interval(time.monotonic() - start))


def _observe(entry: Tracked, state: str, reason: str, nodes: str, now: float, warned: set[str]) -> None:
    if (state, reason) != (entry.state, entry.reason) and not (state == entry.state and state != "PENDING"):
        where = f" on {nodes}" if state == "RUNNING" and nodes else ""
        # why it waits; why it ended, unless squeue still shows the reason it once waited for
        shown = reason not in ("None", "") if state == "PENDING" else state not in ACTIVE and reason not in WAITING
        log.info("%s: %s%s%s", entry.label(), state, f" ({reason})" if shown else "", where)
        if state == "PENDING" and reason.startswith(NEVER_STARTS) and reason not in warned:
            warned.add(reason)  # once per reason: the other jobs of the array mostly wait for the same
            log.warning("%s cannot start as requested (%s): it waits until the cluster or its limits change; "
                        "`scancel %s` and change hydra.launcher.* to stop waiting", entry.label(), reason,
                        entry.slurm_id.split("_")[0])
    entry.state, entry.reason, entry.gone = state, reason, False
    if state not in ACTIVE:
        entry.ended = entry.ended or now
    else:
        entry.ended = None


# ---------------------------------------------------------------------------------------------------------------------
# The record of a job SLURM ended without a result
def record_lost(results_dir: str, sweep_dir: str, num: int, overrides: list[str], config: DictConfig, error: str,
                slurm_id: str) -> None:
    """A `failed` row (error_type LostJob, the SLURM state in `error`) for job `num` of the sweep, which SLURM ended
    before the job wrote one; `config` is the job's composed config (model, k, selector, dataset of the row)."""
    from .. import results

    def value(key: str) -> Any:
        try:
            return OmegaConf.select(config, key, default=None)
        except Exception:  # noqa: BLE001 - an interpolation that needs the job's own context
            return None

    row = results.RunRecord.lost(
        results.sweep_id_for(sweep_dir), sweep_dir, num, overrides, error, topk=value("topk"),
        selector=value("selector.name"), dataset=value("dataset.name"), weights=value("model.weights"),
        hf_id=value("model.hf_id"), model_type=value("model.model_type"),
        experiment=value("hydra.runtime.choices.experiment"), slurm_job_id=slurm_id)
    try:
        results.write_part(results_dir, "runs", str(value("model.name") or "unknown"), [row], None, row.run_id)
    except RunnerError as exc:
        log.error("could not record job %d (SLURM %s): %s", num, slurm_id, exc)


def recorded(results_dir: str, sweep_dir: str) -> set[int]:
    """The job numbers of the sweep that have a row in results_dir."""
    import pyarrow.dataset as ds

    from .. import results

    runs = results.read_table(results_dir, "runs", columns=["job_num"],
                              filter=ds.field("sweep_id") == results.sweep_id_for(sweep_dir))
    return {int(n) for n in runs["job_num"].dropna()}


def absolute(path: str, cwd: str) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(cwd) / p)


def log_to(path: Path) -> logging.Handler:
    """The SLURM log lines (job ids, state changes, the cluster check) also go to <sweep dir>/slurm.log."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger(__package__)  # runner.slurm: this package's modules log under it
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def notice_accounting() -> None:
    """One line instead of submitit's `Bypassing sacct error` on every poll: where the job states come from."""
    try:
        kind = accounting()
    except ClusterError as exc:
        log.info("could not read the SLURM config (%s); job states come from squeue", exc)
        return
    if kind is None:
        log.info("SLURM accounting is disabled on this cluster (sacct cannot answer): job states come from squeue, "
                 "which lists a job until MinJobAge after it ends")
