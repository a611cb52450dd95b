"""Multiruns in-process (basic launcher): FLOPs per job, model reuse, the smoke experiment, resume. Through the CLI
with joblib / submitit_local, failures and crashes: tests/e2e/test_cli_sweeps.py."""
from __future__ import annotations

import json

import pandas as pd

from helpers.jobs import E, H, I, moe_flops, runs_of
from runner import results

SMALL = ["max_batches=1", "seq_len=64"]


def test_inprocess_topk_sweep_matches_formula_and_reuses_the_model(run_sweep, tmp_path):
    from runner.job.models import clear_cache

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
