"""Multiruns: in-process (basic launcher) and through the CLI with joblib / submitit_local; failures, crashes, resume."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import DATA, ROOT
from helpers.cli import cli_env
from helpers.jobs import E, H, I, moe_flops, runs_of
from runner import results

SMALL = ["max_batches=1", "seq_len=64"]


def test_inprocess_topk_sweep_matches_formula_and_reuses_the_model(run_sweep, tmp_path):
    from runner.models import clear_cache

    clear_cache()  # earlier tests in this process may have left olmoe_tiny loaded
    with run_sweep(tmp_path, "model=olmoe_tiny", "topk=1,2,4", *SMALL) as s:
        (batch,) = s.returns
        assert [r.return_value["status"] for r in batch] == ["ok", "ok", "ok"]
        summary = pd.read_parquet(tmp_path / "sweep" / "summary.parquet")
    runs = runs_of(tmp_path, tmp_path / "sweep")
    assert list(runs["topk"]) == [1, 2, 4] and list(runs["job_num"]) == [0, 1, 2]
    expected = [moe_flops(k) for k in (1, 2, 4)]  # 2 MoE layers x (2HE + k 6HI)
    assert list(runs["flops_per_token_analytic"]) == expected == list(runs["flops_per_token_measured"])
    assert list(runs["model_reused"]) == [False, True, True]
    assert runs["overrides"].map(json.loads).map(lambda o: [x for x in o if x.startswith("topk=")]).tolist() == [
        ["topk=1"], ["topk=2"], ["topk=4"]]
    assert runs["config_hash"].is_unique and runs["run_id"].is_unique
    assert list(summary["topk"]) == [1, 2, 4] and set(summary["status"]) == {"ok"}
    layers = results.read_table(tmp_path / "results", "layers")
    assert len(layers) == 6 and layers["run_id"].isin(runs["run_id"]).all()


def test_smoke_experiment_over_four_architectures(run_sweep, tmp_path):
    with run_sweep(tmp_path, "experiment=smoke", "max_batches=1") as s:
        (batch,) = s.returns
        assert len(batch) == 12 and {r.return_value["status"] for r in batch} == {"ok"}
    runs = runs_of(tmp_path, tmp_path / "sweep")
    assert (runs["experiment"] == "smoke").all() and (runs["tag"] == "smoke").all()
    shared = {"olmoe_tiny": 0, "mixtral_tiny": 0, "qwen2_moe_tiny": 6 * H * 48 + 2 * H, "deepseek_v3_tiny": 6 * H * 32}
    for _, row in runs.iterrows():
        expected = 2 * (2 * H * E + row["topk"] * 6 * H * I + shared[row["model"]])
        assert row["flops_per_token_analytic"] == expected == row["flops_per_token_measured"], row["model"]
    assert {m: sorted(g["topk"]) for m, g in runs.groupby(runs["model"].astype(str))} == {m: [1, 2, 4] for m in shared}


def test_resume_runs_only_what_is_missing(run_sweep, tmp_path):
    with run_sweep(tmp_path, "topk=1,2", *SMALL, name="first"):
        pass
    with run_sweep(tmp_path, "topk=1,2,4", "resume=true", *SMALL, name="second") as s:
        (batch,) = s.returns
        assert [r.return_value["status"] for r in batch] == ["skipped", "skipped", "ok"]
        summary = pd.read_parquet(tmp_path / "second" / "summary.parquet")
    first = runs_of(tmp_path, tmp_path / "first")
    second = runs_of(tmp_path, tmp_path / "second")
    assert list(second["resumed_from"].iloc[:2]) == list(first["run_id"])
    # the summary shows the reused results, not empty rows
    assert list(summary["topk"]) == [1, 2, 4] and summary["loss"].notna().all()
    assert list(summary["flops_per_token_analytic"]) == [moe_flops(k) for k in (1, 2, 4)]


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", "-m", f"out_root={tmp_path}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}", *args], cwd=ROOT, env=cli_env(**env),
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
    duckdb = pytest.importorskip("duckdb")
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
