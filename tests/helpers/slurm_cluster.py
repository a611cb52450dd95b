"""A private single-node SLURM cluster for the tests in this directory (docs/slurm.md, "Trying it on one machine").

`slurm_cluster` (session scope) writes its own slurm.conf (one node: this host with its CPUs and memory;
select/cons_tres, proctrack/linuxproc, task/none, no accounting storage), keeps munged's socket and key, slurmctld's
state, slurmd's spool and every log under one temporary directory, starts munged, slurmctld and slurmd by hand on
private ports and socket, and at the end cancels every job, stops the three daemons by pid and removes the directory.
It needs root (slurmd starts the jobs) and slurm-wlm + munge installed; elsewhere the tests are skipped with a reason
that says how to enable them. Nothing here imports other test modules.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository (tests/helpers/..)
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")
INSTALL = "apt-get install -y --no-install-recommends slurm-wlm munge"
ENABLE = (f"the SLURM tests start a private cluster: install slurm-wlm and munge ({INSTALL}; .ci/run does it when it "
          "runs as root with apt) and run pytest as root")
MAX_TIME_MIN = 60  # the partition's MaxTime: a longer hydra.launcher.timeout_min is refused by the cluster check


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Cluster:
    root: Path
    conf: Path
    node: str
    cpus: int
    memory_mb: int
    partition: str = "debug"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a command against this cluster (no SLURM_*/SBATCH_* of an outer allocation)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "RUNNER_SLURM_")) and k != "HYDRA_FULL_ERROR"}
        env.update(SLURM_CONF=str(self.conf), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
        env.update(extra)
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A SLURM client command (squeue, scancel, ...) against this cluster."""
        return subprocess.run(list(args), env=self.env(), capture_output=True, text=True, timeout=timeout,
                              check=check)

    def active_jobs(self) -> list[str]:
        out = self.run("squeue", "--noheader", "--array", "--states=PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED",
                       "--format=%i", check=False)
        return out.stdout.split()

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no job of this cluster is queued, running or completing."""
        deadline = time.monotonic() + timeout
        while self.active_jobs() and time.monotonic() < deadline:
            time.sleep(0.5)


def _node() -> tuple[str, int, int, str]:
    """(name, CPUs, memory MB, the NodeName line) of this host, as slurmd sees it."""
    line = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    return fields["NodeName"], int(fields["CPUs"]), int(fields["RealMemory"]), line


def _write_conf(root: Path, node_line: str, node: str, ports: list[int]) -> Path:
    conf = root / "slurm.conf"
    (root / "plugstack.conf").write_text("")  # none of the host's SPANK plugins
    conf.write_text(f"""# written by tests/helpers/slurm_cluster.py: a private one-node cluster
ClusterName=moeprof-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
PlugStackConfig={root}/plugstack.conf
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# no accounting storage (sacct cannot answer); usage is sampled every second so that a job over its --mem is killed
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
MpiDefault=none
SchedulerType=sched/builtin
ReturnToService=2
KillWait=5
DefMemPerCPU=512
{node_line.split(" UpTime=")[0]} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime={MAX_TIME_MIN} State=UP
""")
    return conf


def _ours(root: Path) -> list[int]:
    """Pids of the processes that hold a file under `root` open (daemons and job steps of this cluster)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith(f"{root}/") for link in links):
            pids.append(int(proc.name))
    return pids


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_for(what: str, ready, root: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            logs = "; ".join(f"{p.name}: {' | '.join(p.read_text(errors='replace').splitlines()[-3:])}"
                             for p in sorted(root.glob("*.log")))
            raise RuntimeError(f"the test cluster's {what} did not come up in {timeout:.0f} s ({logs})")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm_cluster():
    missing = [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed; {ENABLE}")
    if os.geteuid() != 0:
        pytest.skip(f"not root; {ENABLE}")
    root = Path(tempfile.mkdtemp(prefix="moe-slurm-"))
    root.chmod(0o755)  # munged wants its socket's directory searchable by all
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    node, cpus, memory, line = _node()
    cluster = Cluster(root, _write_conf(root, line, node, _free_ports(2)), node, cpus, memory)
    logs = open(root / "daemons.out", "ab")  # noqa: SIM115 - closed at the end
    try:
        cluster.procs["munged"] = subprocess.Popen(
            [_which("munged"), "--foreground", f"--socket={root}/munge.socket", f"--key-file={key}",
             f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed"],
            stdout=logs, stderr=logs)
        _wait_for("munged", lambda: (root / "munge.socket").exists(), root)
        for daemon, extra in (("slurmctld", []), ("slurmd", ["-N", node])):
            cluster.procs[daemon] = subprocess.Popen([_which(daemon), "-D", "-f", str(cluster.conf), *extra],
                                                     env=cluster.env(), stdout=logs, stderr=logs)
        _wait_for("node", lambda: cluster.run("sinfo", "--noheader", "--format=%T", check=False).stdout.strip()
                  in ("idle", "mixed", "allocated"), root)
        yield cluster
    finally:
        try:
            if "slurmctld" in cluster.procs and cluster.procs["slurmctld"].poll() is None:
                cluster.run("scancel", "--full", "--user=root", check=False)
                cluster.wait_idle(60)
        finally:
            for daemon in ("slurmd", "slurmctld", "munged"):
                if daemon in cluster.procs:
                    _stop(cluster.procs[daemon])
            for pid in _ours(root):  # a job step left behind (slurmstepd and its job): by pid, never by name
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            logs.close()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def runner_sweep(slurm_cluster):
    """Start `python -m runner -m <args>` against the test cluster (returns the Popen; stdout and stderr piped)."""
    def start(out: Path, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "runner", "-m", f"out_root={out}",
                                 f"hydra.sweep.dir={out / 'sweep'}", *args], cwd=ROOT, env=slurm_cluster.env(**env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return start
