"""Interrupted sweeps of `python -m runner -m`: killing one mid-run (kill -9) leaves only complete parquet files and
resume runs only what is missing (issue 6); Ctrl-C ends in one line, exit 130, the running job recorded as interrupted
(issue 13, item 9). Re-running a job never overwrites older results: tests/integration/test_job.py."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from helpers import ROOT, TINY_MODEL, tiny_unless_named
from helpers.cli import cli_env

MODELS = "model=olmoe_tiny,mixtral_tiny,qwen2_moe_tiny,deepseek_v3_tiny"


def runner(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner", "-m", f"out_root={tmp_path}", "seq_len=64",
                             *tiny_unless_named(args)],
                            cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_mid_sweep_then_resume(tmp_path, run_sweep):
    runs_dir = tmp_path / "results" / "table=runs"
    proc = runner(tmp_path, MODELS)
    deadline = time.time() + 120
    while time.time() < deadline and not list(runs_dir.glob("*/part-*.parquet")):
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup, no callback
    proc.communicate(timeout=60)
    written = sorted((tmp_path / "results").rglob("*.parquet"))
    assert written, "the first job should have finished before the kill"
    for path in written:  # every visible file is a complete parquet file
        assert not path.name.startswith("."), path
        pq.read_table(path)
    first = pd.read_parquet(runs_dir)
    assert 1 <= len(first) < 4 and set(first["status"]) == {"ok"}

    # the resumed sweep runs in-process (the kill above is what needs a real process)
    with run_sweep(tmp_path, MODELS, "seq_len=64", "resume=true", name="resumed") as resumed:
        (batch,) = resumed.returns
        assert len(batch) == 4
    runs = pd.read_parquet(runs_dir)
    latest = runs[runs["timestamp"] > first["timestamp"].max()]
    assert sorted(latest["status"]) == sorted(["skipped"] * len(first) + ["ok"] * (4 - len(first)))
    assert set(latest.loc[latest["status"] == "skipped", "resumed_from"]) == set(first["run_id"])
    assert set(latest["model"].astype(str)) == {"olmoe_tiny", "mixtral_tiny", "qwen2_moe_tiny", "deepseek_v3_tiny"}


# -- Ctrl-C mid-sweep (issue 13, item 9) -------------------------------------------------------------------------------
def test_ctrl_c_mid_sweep_is_one_line_rc_130_and_the_job_is_recorded_interrupted(tmp_path):
    import random
    import signal
    import time

    import pandas as pd

    words = "the of and to in is was for on that with as by at from his her an which or were are be".split()
    rng = random.Random(0)
    big = tmp_path / "big.txt"  # ~1.2 MB: job 1 takes tens of seconds, job 0 (max_batches=1) a moment
    big.write_text("\n".join(" ".join(rng.choice(words) for _ in range(200)) for _ in range(1500)))
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "runner", "-m", TINY_MODEL, "max_batches=1,null", "dataset=local",
                             f"dataset.path={big}", "seq_len=64", f"out_root={tmp_path}", f"hydra.sweep.dir={sweep_dir}"],
                            cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while time.time() < deadline and not (sweep_dir / "1").is_dir() and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # job 1 is loading or profiling its text
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == ("runner: interrupted (Ctrl-C): job 1 is recorded with status=interrupted; run the same "
                           "command with resume=true to run only what is missing"), err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    runs = pd.read_parquet(tmp_path / "results" / "table=runs").sort_values("job_num")
    assert list(runs["status"]) == ["ok", "interrupted"] and list(runs["job_num"]) == [0, 1]
    assert runs["error"].iloc[1] == "interrupted (Ctrl-C / SIGINT) before the job finished"
    assert "hard crash" not in " ".join(runs["error"].dropna())


def test_ctrl_c_anywhere_in_a_sweep_of_quick_jobs_is_one_line(tmp_path):
    """Jobs of a few ms (meta weights): the interrupt lands in a job, in Hydra's config loader or its launcher."""
    import re
    import signal
    import time

    import pandas as pd

    delays = (0.0, 0.15)
    procs = [subprocess.Popen([sys.executable, "-m", "runner", "-m", TINY_MODEL, "model.weights=meta",
                               "topk=1,2,3,4,5,6,7,8",
                               f"out_root={tmp_path / str(i)}", f"hydra.sweep.dir={tmp_path / str(i) / 'sweep'}"],
                              cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(len(delays))]
    for i, (proc, delay) in enumerate(zip(procs, delays)):
        runs = tmp_path / str(i) / "results" / "table=runs"
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None and not list(runs.glob("*/part-*.parquet")):
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert re.fullmatch(r"runner: interrupted \(Ctrl-C\): (job \d is recorded with status=interrupted|no job was "
                            r"running); run the same command with resume=true to run only what is missing\n", err), err
        assert "Traceback" not in out and "Error" not in out
        status = pd.read_parquet(tmp_path / str(i) / "results" / "table=runs")["status"]
        assert set(status) <= {"ok", "interrupted"} and (status == "interrupted").sum() <= 1
