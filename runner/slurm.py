"""SLURM sweeps (docs/slurm.md): the cluster check, following an array with squeue, recording jobs SLURM ended.

* `ClusterCheck`, a Hydra callback the `slurm` and `slurm_cpu` presets put first: before anything is written or
  submitted, it checks the request against the cluster (scontrol: partition, node states, GPUs, CPUs, memory, time
  limit; then `sbatch --test-only` on the very script submitit will submit) and stops the sweep with one line when the
  jobs could not run or would pend forever.
* `follow()`: polls squeue (sacct needs accounting, which many clusters do not run) until every job of an array has a
  result file or a final state, and logs each job's SLURM id and state changes (console and <sweep dir>/slurm.log).
* `lost_error()` / `record_lost()`: the `failed` row (error_type LostJob) of a job SLURM ended without a result
  (scancel, memory or time limit, node failure), its error naming the SLURM state.
* `job_id()`: the SLURM id of the running job, for the runs table; `TimeLimit`: what a job near its time limit
  raises (the launcher's checkpoint(), on SLURM's USR2), so that it records itself as failed, not lost.

The launcher itself is hydra_plugins/runner_slurm/slurm_launcher.py (Hydra takes launchers only from the
hydra_plugins package). Nothing here imports submitit or torch at import time.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .errors import RunnerError

log = logging.getLogger(__name__)

# job states in which SLURM may still run the job (anything else is final)
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
          "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "POWER_UP_NODE"}
# pending reasons that do not clear by waiting: the job starts only if the cluster, its limits or the job change
NEVER_STARTS = ("Partition", "QOSMax", "AssocMax", "MaxWall", "BadConstraints", "InvalidAccount", "InvalidQOS",
                "ReqNodeNotAvail", "JobHeld", "DependencyNeverSatisfied", "Nodes required", "AccountNotAllowed",
                "QOSNotAllowed")
# reasons squeue keeps showing after a job leaves PENDING: they say nothing about how it ended
WAITING = ("None", "(null)", "", "Priority", "Resources", "JobArrayTaskLimit", "Dependency", "BeginTime")
# node state flags (scontrol: IDLE+DRAIN, DOWN+NOT_RESPONDING, ...) of a node that takes no jobs (POWERED_DOWN does)
DOWN = {"DOWN", "DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING", "INVAL", "FUTURE", "NOT_RESPONDING"}
RESULT_WAIT_S = 15.0  # a finished job's result file may show up late on a network filesystem (submitit waits as long)
NEVER_SEEN_S = 60.0  # a submitted job squeue has never listed is taken as gone after this long


class ClusterError(RunnerError):
    """The SLURM request cannot run on this cluster (or the cluster does not answer)."""


class TimeLimit(RunnerError):
    """The job is about to reach its SLURM time limit (raised in the job, recorded as its failed row)."""


def near_time_limit(started: float, timeout_min: float, now: float | None = None) -> bool:
    """Whether a USR2 from SLURM means the time limit rather than a preemption: submitit's own test
    (SignalHandler.has_timed_out: the job ran 80 % of its time, or all but 10 minutes)."""
    limit = float(timeout_min) * 60
    return (time.time() if now is None else now) - started >= min(limit * 0.8, limit - 600)


def time_limit_error(timeout_min: Any, signal_delay_s: Any) -> TimeLimit:
    return TimeLimit(f"SLURM job {job_id()} is about to reach its time limit (TIMEOUT in {signal_delay_s} s; "
                     f"hydra.launcher.timeout_min={timeout_min}) and stopped to record this; raise "
                     "hydra.launcher.timeout_min; resume=true runs it again")


def job_id(environ: Any = None) -> str | None:
    """The SLURM id of the job this process runs in, as squeue and scancel spell it (`<array>_<task>` for an
    array task), or None outside SLURM."""
    env = os.environ if environ is None else environ
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return env.get("SLURM_JOB_ID") or None


# ---------------------------------------------------------------------------------------------------------------------
# Talking to SLURM: one subprocess per question, its error as one line
def _one_line(text: str) -> str:
    return " ".join(text.split())


def slurm(*args: str, timeout: float = 60) -> str:
    """stdout of a SLURM command; ClusterError with its own error line when it fails."""
    try:
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ClusterError(f"{args[0]} is not on PATH: run the sweep on a host of the SLURM cluster (a login node), "
                           "or use a local launcher (hydra/launcher=submitit_local)") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`{' '.join(args[:2])}` did not answer within {timeout:.0f} s (slurmctld busy or "
                           "unreachable?)") from None
    if out.returncode:
        raise ClusterError(_one_line(out.stderr or out.stdout) or f"`{' '.join(args[:2])}` exited {out.returncode}")
    return out.stdout


def _records(kind: str) -> list[dict[str, str]]:
    """`scontrol show <kind> -o`: one dict per partition or node (the values this module reads have no spaces)."""
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in slurm("scontrol", "show", kind, "-o").splitlines()
            if line.strip() and "=" in line]


@functools.lru_cache(maxsize=1)
def accounting() -> str | None:
    """The cluster's AccountingStorageType; None when accounting is disabled (sacct cannot answer)."""
    for line in slurm("scontrol", "show", "config").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageType":
            value = value.strip()
            return None if value in ("", "(null)", "accounting_storage/none") else value
    return None


def _minutes(limit: str) -> float | None:
    """A SLURM time limit (minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]],
    UNLIMITED) in minutes; None when unlimited."""
    if not limit or limit.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A"):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [float(p) for p in clock.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0.0, 0.0])[:3]
    else:
        hours, minutes, seconds = ([0.0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0.0, parts[0], 0.0)
    return float(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def _megabytes(value: Any) -> float | None:
    """sbatch memory (`4G`, `4000M`, `64GB`, a number of MB) in MB."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)B?\s*", str(value).upper())
    if not match:
        return None
    return float(match.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[match.group(2)]


def _gpus(gres: str) -> int:
    """GPUs in a node's or a request's gres string (`gpu:a100:4(S:0-1),gpu:2`, `(null)`)."""
    total = 0
    for item in gres.split(","):
        fields = re.sub(r"\(.*?\)", "", item).split(":")
        if fields[0] == "gpu":
            total += int(fields[-1]) if fields[-1].isdigit() and len(fields) > 1 else 1
    return total


# ---------------------------------------------------------------------------------------------------------------------
# The check before anything is submitted
def executor(params: dict[str, Any], folder: str):
    """The submitit executor a launcher with these `hydra.launcher` params builds (as hydra-submitit-launcher does)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(cluster="slurm", folder=folder,
                                     slurm_max_num_timeout=params.get("max_num_timeout", 0))
    executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("_target_", "submitit_folder", "max_num_timeout")})
    return executor


def check(params: dict[str, Any]) -> list[str]:
    """Raise ClusterError (one line, naming the hydra.launcher key to change) when jobs with these launcher params
    cannot run on this cluster or would pend forever; return warnings (lines) for what may only delay them."""
    warnings = [f"{name}={os.environ[name]} in the environment overrides the preset's value for every job (sbatch "
                "reads it after the script's #SBATCH lines)" for name in sorted(os.environ)
                if name in ("SBATCH_PARTITION", "SBATCH_ACCOUNT", "SBATCH_QOS", "SBATCH_TIMELIMIT", "SBATCH_GRES",
                            "SBATCH_MEM_PER_NODE", "SBATCH_MEM_PER_CPU", "SBATCH_GPUS_PER_NODE")]
    partitions = {p.get("PartitionName"): p for p in _records("partition")}
    names = ", ".join(n + ("*" if p.get("Default") == "YES" else "") for n, p in partitions.items())
    wanted = params.get("partition")
    if wanted:
        chosen = str(wanted).split(",")
        unknown = [p for p in chosen if p not in partitions]
        if unknown:
            raise ClusterError(f"hydra.launcher.partition={wanted}: no partition {unknown[0]!r} on this cluster; its "
                               f"partitions: {names or 'none'} (* the default); set hydra.launcher.partition or "
                               "RUNNER_SLURM_PARTITION")
        label = f"partition {wanted!r}"
    else:
        chosen = [n for n, p in partitions.items() if p.get("Default") == "YES"]
        if not chosen:
            raise ClusterError(f"no partition given and this cluster has no default partition; set "
                               f"hydra.launcher.partition (or RUNNER_SLURM_PARTITION) to one of: {names or 'none'}")
        label = f"partition {chosen[0]!r} (the cluster's default)"
    for name in chosen:
        state = partitions[name].get("State", "UP")
        if state != "UP":
            raise ClusterError(f"partition {name!r} is {state}, so no job would start; pick another with "
                               f"hydra.launcher.partition (partitions: {names})")
    nodes = [n for n in _records("node") if set(n.get("Partitions", "").split(",")) & set(chosen)]
    if not nodes:
        raise ClusterError(f"{label} has no nodes; pick another with hydra.launcher.partition (partitions: {names})")
    up = [n for n in nodes if not DOWN & set(n.get("State", "").split("+"))]
    if not up:
        states = ", ".join(f"{n.get('NodeName')} {n.get('State')}" for n in nodes[:4])
        warnings.append(f"no node of {label} takes jobs now ({states}): the jobs wait until one returns")

    tasks = int(params.get("tasks_per_node") or 1)
    gpus = max(int(params.get("gpus_per_node") or 0), int(params.get("gpus_per_task") or 0) * tasks,
               _gpus(str(params.get("gres") or "")))
    most_gpus = max(_gpus(n.get("Gres", "")) for n in nodes)
    if gpus and not most_gpus:
        raise ClusterError(f"the jobs ask for {gpus} GPU(s) per node (hydra.launcher.gpus_per_node), but no node of "
                           f"{label} has a GPU: use hydra/launcher=slurm_cpu for CPU jobs, or a GPU partition "
                           "(hydra.launcher.partition=...)")
    if gpus > most_gpus:
        raise ClusterError(f"the jobs ask for {gpus} GPUs per node, but a node of {label} has at most {most_gpus}: "
                           "lower hydra.launcher.gpus_per_node")
    cpus = max(int(params.get("cpus_per_task") or 1) * tasks, int(params.get("cpus_per_gpu") or 0) * gpus)
    most_cpus = min([max(int(n.get("CPUTot") or 0) for n in nodes),
                     *(int(partitions[p]["MaxCPUsPerNode"]) for p in chosen
                       if partitions[p].get("MaxCPUsPerNode", "").isdigit())])
    if cpus > most_cpus:
        raise ClusterError(f"the jobs ask for {cpus} CPUs per node (hydra.launcher.cpus_per_task x tasks_per_node), "
                           f"but a node of {label} has at most {most_cpus}: lower hydra.launcher.cpus_per_task")
    mem = _megabytes(f"{params['mem_gb']}G") if params.get("mem_gb") else None
    if params.get("mem_per_cpu"):
        mem = (_megabytes(params["mem_per_cpu"]) or 0) * cpus
    most_mem = max(float(n.get("RealMemory") or 0) for n in nodes)
    part_mem = [float(partitions[p]["MaxMemPerNode"]) for p in chosen
                if partitions[p].get("MaxMemPerNode", "").isdigit()]
    limit = min([most_mem, *part_mem])
    if mem and mem > limit:
        raise ClusterError(f"the jobs ask for {mem / 1024:g} GB per node (hydra.launcher.mem_gb), but a node of {label} "
                           f"offers at most {limit / 1024:.1f} GB: lower hydra.launcher.mem_gb (or RUNNER_SLURM_MEM_GB)")
    count = int(params.get("nodes") or 1)
    if count > len(nodes):
        raise ClusterError(f"the jobs ask for {count} nodes (hydra.launcher.nodes), but {label} has {len(nodes)}")
    minutes = params.get("timeout_min")
    for name in chosen:
        most = _minutes(partitions[name].get("MaxTime", ""))
        if minutes and most is not None and float(minutes) > most:
            raise ClusterError(f"hydra.launcher.timeout_min={minutes} is longer than partition {name!r} allows "
                               f"(MaxTime {partitions[name].get('MaxTime')}, {most:g} min): the jobs would pend "
                               "forever; lower hydra.launcher.timeout_min (or RUNNER_SLURM_TIME_MIN)")
    if up:  # with every node down or drained, --test-only refuses what sbatch would queue until they return
        _test_only(params)
    return warnings


def _test_only(params: dict[str, Any]) -> None:
    """`sbatch --test-only` on the script submitit would submit: the scheduler's own verdict (accounts, QOS, node
    features, anything the checks above do not model). Nothing is queued."""
    with tempfile.TemporaryDirectory(prefix="runner-slurm-check-") as folder:
        script = Path(folder) / "check.sh"
        built = executor(params, folder)._executor  # noqa: SLF001 - submitit's SLURM executor behind AutoExecutor
        script.write_text(built._make_submission_file_text("true", "check"))  # noqa: SLF001
        try:
            slurm("sbatch", "--test-only", str(script))
        except ClusterError as exc:
            raise ClusterError(f"sbatch --test-only refuses the jobs: {exc}") from None


class ClusterCheck(Callback):
    """First callback of the SLURM presets: the cluster check, before the sweep writes or submits anything."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.launcher
        if not str(launcher.get("_target_", "")).startswith("hydra_plugins.runner_slurm."):
            return  # the launcher was swapped on the command line: nothing of ours to check
        choice = OmegaConf.select(config, "hydra.runtime.choices", default={}).get("hydra/launcher") or "slurm"
        params = {k: v for k, v in OmegaConf.to_container(launcher, resolve=True).items() if k != "_target_"}
        try:
            lines = check(params)
        except ClusterError as exc:
            raise SystemExit(f"runner: error: hydra/launcher={choice}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a cluster this check cannot read: sbatch still has the last word
            lines = [f"the cluster check failed ({type(exc).__name__}: {_one_line(str(exc))[:200]}); submitting anyway"]
        for line in lines:
            print(f"runner: warning: hydra/launcher={choice}: {line}", file=sys.stderr, flush=True)


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
    from . import results
    from .provenance import provenance

    def value(key: str) -> Any:
        try:
            return OmegaConf.select(config, key, default=None)
        except Exception:  # noqa: BLE001 - an interpolation that needs the job's own context
            return None

    row = dict(schema_version=results.SCHEMA_VERSION, run_id=results.new_run_id(),
               sweep_id=results.sweep_id_for(sweep_dir), sweep_dir=sweep_dir, job_num=num,
               job_dir=str(Path(sweep_dir) / str(num)), timestamp=dt.datetime.now(dt.timezone.utc), status="failed",
               error=error, error_type="LostJob", overrides=json.dumps(overrides), topk=value("topk"),
               selector=value("selector.name"), dataset=value("dataset.name"), weights=value("model.weights"),
               hf_id=value("model.hf_id"), model_type=value("model.model_type"),
               experiment=value("hydra.runtime.choices.experiment"))
    if "slurm_job_id" in results.RUNS.names:
        row["slurm_job_id"] = slurm_id
    row.update(provenance())
    try:
        results.write_part(results_dir, "runs", str(value("model.name") or "unknown"), [row], None, row["run_id"])
    except RunnerError as exc:
        log.error("could not record job %d (SLURM %s): %s", num, slurm_id, exc)


def recorded(results_dir: str, sweep_dir: str) -> set[int]:
    """The job numbers of the sweep that have a row in results_dir."""
    import pyarrow.dataset as ds

    from . import results

    runs = results.read_table(results_dir, "runs", columns=["job_num"],
                              filter=ds.field("sweep_id") == results.sweep_id_for(sweep_dir))
    return {int(n) for n in runs["job_num"].dropna()}


def absolute(path: str, cwd: str) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(cwd) / p)


def log_to(path: Path) -> logging.Handler:
    """This module's log lines (job ids, state changes) also go to <sweep dir>/slurm.log."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger(__name__)
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
