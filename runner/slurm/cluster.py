"""The cluster side of SLURM sweeps: job states, asking SLURM (one subprocess per question, its error as one line),
the running job's id, time limits, and `ClusterCheck`, which refuses in one line a request no node can run."""
from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..errors import RunnerError, one_line

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
        raise ClusterError(one_line(out.stderr or out.stdout) or f"`{' '.join(args[:2])}` exited {out.returncode}")
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
            lines = [f"the cluster check failed ({type(exc).__name__}: {one_line(exc, 200)}); submitting anyway"]
        for line in lines:
            print(f"runner: warning: hydra/launcher={choice}: {line}", file=sys.stderr, flush=True)
