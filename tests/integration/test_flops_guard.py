"""The run-time guard: a layer or whole forward marked exact whose measured FLOPs differ from the analytic count of
the same tokens is never stored as exact. A handler with a wrong expert width forces the mismatch; the library warns
with the layer and both numbers and flags its rows, and a job stores exact=false, flops_warning in `layers` and
`runs`, and says so in its summary."""
from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch

from handlers import REGISTRY
from helpers.jobs import latest_run, run_job, table
from helpers.tiny_configs import build_tiny_model
from runner import MOEProfiler


@pytest.fixture
def wrong_olmoe_handler(monkeypatch):
    """OLMoE's entry reading the expert width from `hidden_size` (64) instead of `intermediate_size` (32)."""
    right = REGISTRY.handlers["olmoe"]
    monkeypatch.setitem(REGISTRY.handlers, "olmoe", right.with_(expert_dim=("hidden_size",)))


def forward(model, profiler, batches=1):
    g = torch.Generator().manual_seed(0)
    for _ in range(batches):
        x = torch.randint(2, 128, (2, 12), generator=g)
        with torch.no_grad(), profiler.measure_flops():
            model(input_ids=x)


def test_a_right_handler_measures_as_exact_and_warns_nothing():
    model = build_tiny_model("olmoe")
    profiler = MOEProfiler(model, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mismatch warning
        forward(model, profiler, batches=2)
    df = profiler.layers_df()
    assert df["exact"].all() and (df["flops"] == df["flops_measured"]).all()
    assert "flops_warning" not in df or df["flops_warning"].isna().all()


def test_a_wrong_expert_width_is_flagged_with_both_numbers(wrong_olmoe_handler):
    model = build_tiny_model("olmoe")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scan's dims warning (config contradicts the weights)
        profiler = MOEProfiler(model, verbose=False)
    with pytest.warns(UserWarning, match=r"layer \d+: measured [\d,]+ FLOPs but the analytic count") as caught:
        forward(model, profiler)
    df = profiler.layers_df()
    assert not df["exact"].any()
    for _, row in df.iterrows():
        measured, analytic = int(row["flops_measured"]), int(row["flops"])
        assert measured != analytic
        assert f"{measured:,}" in row["flops_warning"] and f"{analytic:,}" in row["flops_warning"]
        assert f"layer {row['layer']}:" in row["flops_warning"]
    assert len([w for w in caught if "measured" in str(w.message)]) == len(df)


def test_measured_is_compared_with_the_analytic_count_of_the_same_tokens():
    """The runner measures the first batch only: the analytic count of every batch must not be compared with it."""
    model = build_tiny_model("olmoe")
    profiler = MOEProfiler(model, verbose=False)
    forward(model, profiler)  # measured
    with torch.no_grad():
        model(input_ids=torch.randint(2, 128, (3, 12)))  # not measured: more tokens, no FLOPs counted
    df = profiler.layers_df()
    assert (df["flops"] > df["flops_measured"]).all()  # over different tokens ...
    assert df["exact"].all() and ("flops_warning" not in df or df["flops_warning"].isna().all())  # ... no mismatch


def test_a_job_stores_the_mismatch_in_layers_runs_and_its_summary(tmp_path, wrong_olmoe_handler, capsys):
    out = run_job(tmp_path, "model=olmoe_tiny", "max_batches=2", "seq_len=32")
    assert out["status"] == "ok"
    layers = table(tmp_path, "layers")
    prefill = layers[layers["phase"] == "prefill"]
    assert not prefill["exact"].any() and prefill["flops_warning"].str.contains("measured").all()
    run = latest_run(tmp_path)
    assert not run["flops_exact"] and "measured" in run["flops_warning"]
    assert not run["model_flops_exact"] and "whole forward: measured" in run["model_flops_warning"]
    printed = capsys.readouterr()
    assert "WARNING: FLOPs not exact: layer" in printed.out + printed.err


def test_a_right_job_stays_exact(tmp_path):
    run_job(tmp_path, "model=olmoe_tiny", "max_batches=2", "seq_len=32")
    run = latest_run(tmp_path)
    assert run["flops_exact"] and run["model_flops_exact"]
    assert pd.isna(run["flops_warning"]) and pd.isna(run["model_flops_warning"])
