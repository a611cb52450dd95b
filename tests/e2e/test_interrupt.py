"""Killing a sweep mid-run (kill -9) leaves only complete parquet files; resume runs only what is missing;
re-running never overwrites older results (issue 6)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from helpers import ROOT
from helpers.cli import cli_env
from helpers.jobs import run_job

MODELS = "model=olmoe_tiny,mixtral_tiny,qwen2_moe_tiny,deepseek_v3_tiny"


def runner(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner", "-m", f"out_root={tmp_path}", "seq_len=64", *args],
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


def test_rerunning_a_job_never_overwrites_results(tmp_path):
    # in-process: what keeps parts apart is the run id in the file name, not the process
    for _ in range(2):
        assert run_job(tmp_path, "seq_len=64", "max_batches=1")["status"] == "ok"
    runs = pd.read_parquet(tmp_path / "results" / "table=runs")
    assert len(runs) == 2 and runs["run_id"].is_unique and runs["config_hash"].nunique() == 1
    assert len(list((tmp_path / "results" / "table=runs").rglob("part-*.parquet"))) == 2
