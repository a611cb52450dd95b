"""Sweeps on a real (private, single-node) SLURM cluster through the project's presets: a sweep as an array, faults
(scancel mid-run, a memory-limit kill), resume, misconfiguration refused in one line; and the pieces of
runner/slurm/ that need no cluster."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from runner import results, slurm
from helpers import DATA, ROOT
from helpers.slurm_cluster import runner_sweep, slurm_cluster  # noqa: F401 - fixtures

PLUGINS = DATA / "plugins"
TINY = ["model=olmoe_tiny", "max_batches=1", "seq_len=32", "batch_size=2"]
# the CPU preset sized for the test node (2 CPUs): two 1-CPU, 1 GB jobs at a time
CPU = ["hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
       "hydra.launcher.array_parallelism=2"]
SWEEP_S = 300
# the fault-injecting callbacks of tests/data/plugins (a test-only allow-list entry for the preflight)
FAULTS = dict(PYTHONPATH=f"{ROOT}:{PLUGINS}", RUNNER_ALLOW_TARGETS="slurm_faults")


def finish(proc: subprocess.Popen, timeout: float = SWEEP_S) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the sweep did not end within {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def runs_of(out: Path, results_dir: Path | None = None) -> pd.DataFrame:
    runs = results.read_table(results_dir or out / "results", "runs")
    runs = runs[runs["sweep_id"] == results.sweep_id_for(out / "sweep")]
    return runs.sort_values(["job_num", "timestamp"]).reset_index(drop=True)


def slurm_ids(log: str) -> dict[int, str]:
    """job number -> SLURM id, from the launcher's `job N (SLURM A_T)` lines."""
    return {int(n): i for n, i in re.findall(r"job (\d+) \(SLURM (\d+_\d+)\)", log)}


def array_flag(out: Path) -> list[str]:
    return [line for script in (out / "sweep" / ".submitit").glob("*/*_submission.sh")
            for line in script.read_text().splitlines() if line.startswith("#SBATCH --array")]


# -- a sweep through the CPU preset ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sweep_runs_as_one_array_into_one_results_dir(slurm_cluster, runner_sweep, tmp_path):
    # time, memory and CPUs from the environment (the presets' RUNNER_SLURM_* variables), parallelism on the line
    start = time.monotonic()
    code, out, err = finish(runner_sweep(tmp_path, "hydra/launcher=slurm_cpu", "hydra.launcher.array_parallelism=2",
                                         "topk=1,2,4,8", *TINY, RUNNER_SLURM_TIME_MIN="10", RUNNER_SLURM_MEM_GB="1",
                                         RUNNER_SLURM_CPUS="1", RUNNER_SLURM_PARTITION=slurm_cluster.partition))
    print(f"4-job SLURM sweep: {time.monotonic() - start:.1f} s")
    assert code == 0, err[-3000:]
    runs = runs_of(tmp_path)
    assert list(runs["job_num"]) == [0, 1, 2, 3] and list(runs["topk"]) == [1, 2, 4, 8]
    assert set(runs["status"]) == {"ok"} and runs["pid"].nunique() == 4  # each job its own process
    summary = pd.read_parquet(tmp_path / "sweep" / "summary.parquet")
    assert list(summary["topk"]) == [1, 2, 4, 8] and set(summary["status"]) == {"ok"}
    assert "4 job(s) of 4 planned (4 ok)" in out
    assert array_flag(tmp_path) == ["#SBATCH --array=0-3%2"]  # one array, two at a time
    script = next((tmp_path / "sweep" / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --time=10" in script and "#SBATCH --mem=1GB" in script and "#SBATCH --cpus-per-task=1" in script
    assert f"#SBATCH --partition={slurm_cluster.partition}" in script and "gpu" not in script
    # observable: each job's SLURM id and its state changes, in the console and in <sweep>/slurm.log
    ids = slurm_ids(out)  # Hydra's console log is stdout
    assert sorted(ids) == [0, 1, 2, 3] and len({i.split("_")[0] for i in ids.values()}) == 1
    for num, sid in ids.items():
        assert re.search(rf"job {num} \(SLURM {sid}\): RUNNING on {slurm_cluster.node}", out), num
        assert re.search(rf"job {num} \(SLURM {sid}\): (finished|COMPLETED)", out), num
    log = (tmp_path / "sweep" / "slurm.log").read_text()
    assert slurm_ids(log) == ids and "RUNNING" in log
    # quiet: no stream of sacct warnings, one notice that accounting is off
    assert "Bypassing sacct" not in out + err and (out + err).count("accounting is disabled") == 1
    if "slurm_job_id" in summary.columns:  # once the runs table has the column (report: runner/results/, runner/job/pipeline.py)
        assert list(summary["slurm_job_id"]) == [ids[n] for n in range(4)]


# -- faults: scancel mid-run, a memory-limit kill, then resume -----------------------------------------------------------
@pytest.fixture(scope="module")
def faulty(slurm_cluster, runner_sweep, tmp_path_factory):
    """One sweep of 4 jobs: job 1 (topk=2) is cancelled with scancel while it runs, job 2 (topk=4) fills 1.5 GB of a
    1 GB limit; jobs 0 and 3 are ordinary. Then the same sweep again with resume=true."""
    out = tmp_path_factory.mktemp("faulty")
    marker = out / "job1-running"
    start = time.monotonic()
    proc = runner_sweep(out, *CPU, "topk=1,2,4,8", *TINY,
                        "+hydra.callbacks.sleep._target_=slurm_faults.SleepOnTopk", "+hydra.callbacks.sleep.topk=2",
                        f"+hydra.callbacks.sleep.marker={marker}",
                        "+hydra.callbacks.hog._target_=slurm_faults.HogOnTopk", "+hydra.callbacks.hog.topk=4", **FAULTS)
    deadline = time.monotonic() + SWEEP_S
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    ids = slurm_ids((out / "sweep" / "slurm.log").read_text()) if (out / "sweep" / "slurm.log").exists() else {}
    cancelled = slurm_cluster.run("scancel", ids[1], check=False) if marker.exists() and 1 in ids else None
    code, stdout, stderr = finish(proc)
    first = time.monotonic() - start
    again = tmp_path_factory.mktemp("resumed")  # another sweep dir, the same results_dir
    start = time.monotonic()
    resumed = finish(runner_sweep(again, *CPU, "topk=1,2,4,8", *TINY, "resume=true",
                                  f"results_dir={out / 'results'}"))
    print(f"faulty 4-job sweep: {first:.1f} s; resumed: {time.monotonic() - start:.1f} s")
    return dict(out=out, again=again, code=code, stdout=stdout, stderr=stderr, ids=ids, cancelled=cancelled,
                resumed=resumed)


@pytest.mark.slow
def test_scancel_mid_run_is_recorded_with_the_slurm_state(faulty):
    assert faulty["cancelled"] is not None and faulty["cancelled"].returncode == 0, faulty["stderr"][-3000:]
    job = runs_of(faulty["out"]).set_index("job_num").loc[1]
    assert job["status"] == "failed" and job["error_type"] == "LostJob" and job["topk"] == 2
    assert job["error"].startswith(f"SLURM job {faulty['ids'][1]} ended CANCELLED"), job["error"]
    assert "resume=true runs it again" in job["error"]
    if "slurm_job_id" in job:  # once the runs table has the column (report: runner/results/, runner/job/pipeline.py)
        assert job["slurm_job_id"] == faulty["ids"][1]


@pytest.mark.slow
def test_a_job_over_its_memory_limit_is_recorded_with_the_slurm_state(faulty):
    job = runs_of(faulty["out"]).set_index("job_num").loc[2]
    assert job["status"] == "failed" and job["error_type"] == "LostJob" and job["topk"] == 4
    assert job["error"].startswith(f"SLURM job {faulty['ids'][2]} ended "), job["error"]
    assert "exceeded memory limit" in job["error"] and "raise hydra.launcher.mem_gb" in job["error"]


@pytest.mark.slow
def test_the_other_jobs_complete_the_summary_lists_the_failures_and_the_sweep_exits_nonzero(faulty):
    assert faulty["code"] == 1, faulty["stderr"][-3000:]
    runs = runs_of(faulty["out"])
    assert list(runs["status"]) == ["ok", "failed", "failed", "ok"] and list(runs["job_num"]) == [0, 1, 2, 3]
    summary = pd.read_parquet(faulty["out"] / "sweep" / "summary.parquet")
    assert list(summary["status"]) == ["ok", "failed", "failed", "ok"]
    listed = faulty["stdout"][faulty["stdout"].index("FAILED (2):"):]
    assert f"job 1 [" in listed and "CANCELLED" in listed and "job 2 [" in listed and "memory" in listed
    assert "Traceback" not in faulty["stderr"] and "Bypassing sacct" not in faulty["stdout"] + faulty["stderr"]


@pytest.mark.slow
def test_resume_resubmits_only_the_failed_jobs(faulty):
    code, out, err = faulty["resumed"]
    assert code == 0, err[-3000:]
    assert "resume: 2 of 4 jobs already have an ok row" in out and "submitted 2 job(s)" in out
    assert array_flag(faulty["again"]) == ["#SBATCH --array=0-1%2"]  # jobs 1 and 2 only
    assert sorted(slurm_ids(out)) == [1, 2]
    runs = runs_of(faulty["again"], faulty["out"] / "results")
    assert list(runs["status"]) == ["skipped", "ok", "ok", "skipped"]
    summary = pd.read_parquet(faulty["again"] / "sweep" / "summary.parquet")
    assert list(summary["topk"]) == [1, 2, 4, 8] and summary["loss"].notna().all()


@pytest.mark.slow
def test_a_job_at_its_time_limit_is_recorded_as_failed(slurm_cluster, runner_sweep, tmp_path):
    # a one-job sweep with a 1-minute limit; SLURM's USR2 comes signal_delay_s before it (slurmctld looks every 30 s),
    # while the job sleeps in its work
    start = time.monotonic()
    code, out, err = finish(runner_sweep(tmp_path, *CPU, "hydra.launcher.timeout_min=1",
                                         "hydra.launcher.signal_delay_s=30", "topk=2", *TINY,
                                         "+hydra.callbacks.slow._target_=slurm_faults.SlowOnTopk",
                                         "+hydra.callbacks.slow.topk=2", **FAULTS))
    print(f"time-limited 1-job sweep: {time.monotonic() - start:.1f} s")
    assert code == 1, err[-3000:]
    (job,) = runs_of(tmp_path).to_dict("records")
    # recorded by the job itself (TimeLimit), or, if SLURM's signal came too late, by the launcher (LostJob)
    assert job["status"] == "failed" and job["error_type"] in ("TimeLimit", "LostJob"), job["error"]
    assert "TIMEOUT" in job["error"] and "raise hydra.launcher.timeout_min" in job["error"], job["error"]
    assert "Traceback" not in err


# -- misconfiguration: one line, nothing written or submitted -----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["hydra/launcher=slurm"], "the jobs ask for 1 GPU(s) per node (hydra.launcher.gpus_per_node), but no node of "
                               "partition 'debug' (the cluster's default) has a GPU: use hydra/launcher=slurm_cpu"),
    (CPU + ["hydra.launcher.partition=nope"], "hydra.launcher.partition=nope: no partition 'nope' on this cluster; "
                                              "its partitions: debug*"),
    (CPU + ["hydra.launcher.mem_gb=100000"], "the jobs ask for 100000 GB per node (hydra.launcher.mem_gb), but a node"),
    (CPU + ["hydra.launcher.cpus_per_task=512"], "the jobs ask for 512 CPUs per node"),
    (CPU + ["hydra.launcher.timeout_min=600"], "hydra.launcher.timeout_min=600 is longer than partition 'debug' "
                                               "allows"),
    (CPU + ["hydra.launcher.constraint=nosuchfeature"], "sbatch --test-only refuses the jobs: "),
], ids=["gpu-on-a-cpu-cluster", "no-such-partition", "more-memory-than-any-node", "more-cpus-than-any-node",
        "longer-than-the-partition-allows", "unknown-node-feature"])
def test_misconfiguration_is_one_line_before_anything_is_submitted(slurm_cluster, runner_sweep, tmp_path, args,
                                                                    message):
    before = set(slurm_cluster.run("squeue", "--noheader", "--states=all", "--format=%i").stdout.split())
    code, out, err = finish(runner_sweep(tmp_path, *args, "topk=1,2", *TINY), timeout=120)
    assert code == 1 and not out
    (line,) = err.strip().splitlines()
    assert line.startswith(f"runner: error: {args[0]}: ") and message in line, line
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "results").exists()
    after = set(slurm_cluster.run("squeue", "--noheader", "--states=all", "--format=%i").stdout.split())
    assert not after - before  # nothing was submitted (older jobs may have been forgotten meanwhile)


# -- without a cluster --------------------------------------------------------------------------------------------------
def test_job_id_names_an_array_task_as_squeue_does():
    assert slurm.job_id({"SLURM_JOB_ID": "17", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3"}) == "12_3"
    assert slurm.job_id({"SLURM_JOB_ID": "17"}) == "17" and slurm.job_id({}) is None


def test_slurm_units():
    assert [slurm.cluster._minutes(t) for t in ("UNLIMITED", "30", "5:00", "02:00:00", "1-00:00:00", "2-12")] == \
        [None, 30, 5, 120, 1440, 3600]
    assert [slurm.cluster._megabytes(m) for m in ("64GB", "4000M", "2G", "512")] == [65536, 4000, 2048, 512]
    assert [slurm.cluster._gpus(g) for g in ("(null)", "gpu:4", "gpu:a100:4(S:0-1),gpu:h100:2", "gpu", "nic:1")] == \
        [0, 4, 6, 1, 0]


class _Job:
    job_id = "12_3"

    class paths:
        stderr = "/nonexistent"
        result_pickle = "/nonexistent"


def test_state_changes_are_logged_once_and_a_job_that_cannot_start_says_why(caplog):
    entry, warned = slurm.Tracked(3, ["topk=2"], _Job()), set()
    with caplog.at_level(logging.INFO, logger="runner.slurm"):
        for state, reason, node in [("PENDING", "Priority", ""), ("PENDING", "Priority", ""),
                                    ("PENDING", "PartitionTimeLimit", ""), ("RUNNING", "None", "n1"),
                                    ("RUNNING", "None", "n1"), ("CANCELLED", "JobArrayTaskLimit", "n1")]:
            slurm.jobs._observe(entry, state, reason, node, now=0.0, warned=warned)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["job 3 (SLURM 12_3): PENDING (Priority)", "job 3 (SLURM 12_3): PENDING (PartitionTimeLimit)",
                         lines[2]] and lines[2].startswith("job 3 (SLURM 12_3) cannot start as requested")
    assert lines[3:] == ["job 3 (SLURM 12_3): RUNNING on n1", "job 3 (SLURM 12_3): CANCELLED"]
    assert entry.ended == 0.0
    assert slurm.lost_error(entry) == "SLURM job 12_3 ended CANCELLED without recording a result; resume=true runs it again"


def test_lost_error_names_the_limit_to_raise(tmp_path):
    log = tmp_path / "job.err"
    log.write_text("slurmstepd-n1: error: *** JOB 12 ON n1 CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***\n")
    entry = slurm.Tracked(0, [], _Job(), state="TIMEOUT", reason="TimeLimit")
    assert slurm.lost_error(entry, slurm.jobs._stepd_line(log)) == (
        "SLURM job 12_3 ended TIMEOUT (TimeLimit) without recording a result: *** JOB 12 ON n1 CANCELLED AT "
        "2026-01-01T00:00:00 DUE TO TIME LIMIT ***; raise hydra.launcher.timeout_min; resume=true runs it again")
    gone = slurm.Tracked(0, [], _Job(), state="PENDING", gone=True)
    assert slurm.lost_error(gone).startswith("SLURM job 12_3 left the queue before it started (cancelled?)")
    assert json.dumps(slurm.poll_interval(0)) == "2.0" and slurm.poll_interval(3600) == 30
