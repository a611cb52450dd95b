"""Multiruns through the CLI (`python -m runner -m`) with the basic, joblib and submitit_local launchers: failed jobs,
hard crashes. In-process multiruns: tests/integration/test_sweeps.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import DATA, ROOT, tiny_unless_named
from helpers.cli import cli_env
from helpers.jobs import runs_of

SMALL = ["max_batches=1", "seq_len=64"]


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", "-m", f"out_root={tmp_path}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}", *tiny_unless_named(args)], cwd=ROOT, env=cli_env(**env),
                          capture_output=True, text=True, timeout=170)


def test_failed_job_is_recorded_and_the_sweep_exits_nonzero(tmp_path):
    out = cli(tmp_path, "model=olmoe_tiny,mixtral_tiny", "topk=1,9", *SMALL)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "FAILED (2):" in out.stdout and "exceeds the 8 experts" in out.stdout
    runs = runs_of(tmp_path, tmp_path / "sweep")
    assert list(runs["status"]) == ["ok", "failed", "ok", "failed"]
    failed = runs[runs["status"] == "failed"]
    assert failed["error"].str.contains("topk: 9 exceeds the 8 experts").all()
    assert set(failed["error_type"]) == {"ConfigError"} and set(failed["model"].astype(str)) == {"olmoe_tiny",
                                                                                                  "mixtral_tiny"}
    summary = pd.read_parquet(tmp_path / "sweep" / "summary.parquet")
    assert len(summary) == 4 and (summary["status"] == "ok").sum() == 2
    # duckdb reads the same tree with its hive partition
    duckdb = pytest.importorskip("duckdb", exc_type=ModuleNotFoundError,
                                 reason="duckdb (pyproject's test extra) is not installed")
    root = tmp_path / "results"
    got = duckdb.sql(f"SELECT model, topk, status FROM read_parquet('{root}/table=runs/**/*.parquet', "
                     "hive_partitioning=true, union_by_name=true) ORDER BY model, topk").fetchall()
    assert got == [("mixtral_tiny", 1, "ok"), ("mixtral_tiny", 9, "failed"), ("olmoe_tiny", 1, "ok"),
                   ("olmoe_tiny", 9, "failed")]


@pytest.mark.slow
def test_submitit_local_sweep_survives_a_hard_crash(tmp_path):
    plugins = DATA / "plugins"
    out = cli(tmp_path, "hydra/launcher=submitit_local", "topk=1,2", *SMALL,
              "+hydra.callbacks.crash._target_=crash_callback.CrashOnTopk", "+hydra.callbacks.crash.topk=2",
              PYTHONPATH=f"{ROOT}:{plugins}", RUNNER_ALLOW_TARGETS="crash_callback")  # test-only allow-list entry
    assert out.returncode != 0
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))  # job 0 really ran under submitit
    runs = runs_of(tmp_path, tmp_path / "sweep")
    assert list(runs["status"]) == ["ok", "failed"]
    assert runs["error_type"].iloc[1] == "LostJob" and runs["topk"].iloc[1] == 2
    assert "FAILED (1):" in out.stdout
    assert len(pd.read_parquet(tmp_path / "sweep" / "summary.parquet")) == 2


@pytest.mark.slow
def test_joblib_parallel_sweep(tmp_path):
    out = cli(tmp_path, "hydra/launcher=local_parallel", "model=olmoe_tiny,mixtral_tiny", *SMALL)
    assert out.returncode == 0, out.stderr
    runs = runs_of(tmp_path, tmp_path / "sweep")
    assert list(runs["status"]) == ["ok", "ok"] and runs["pid"].nunique() == 2  # two worker processes
    assert "sweep " in out.stdout and "2 ok" in out.stdout
