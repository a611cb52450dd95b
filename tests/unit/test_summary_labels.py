"""The sweep summary and a job's summary say what each number is: every FLOPs column is labelled and explained under
the table, the whole-model line names the batch that really ran, and the unit convention is said once."""
from __future__ import annotations

import pandas as pd

from runner.results import RunRecord
from runner.results.summaries import FLOPS_COLUMNS, UNITS, job_summary, render

STATE = dict(planned=None, sweep_id="s1", results_dir="results")


def _summary():
    jobs = [dict(selector="router", topk=2, k_mean=2.0, flops_per_token_analytic=51200.0,
                 flops_per_token_routed=51200.0, model_flops_per_token_analytic=199040.0),
            dict(selector="kneedle", topk=2, k_mean=1.88, flops_per_token_analytic=51200.0,
                 flops_per_token_routed=48120.0, model_flops_per_token_analytic=195960.0)]
    rows = [RunRecord(job_num=n, status="ok", loss=5.5, **job).as_row() for n, job in enumerate(jobs)]
    return pd.DataFrame(rows).assign(model="olmoe_tiny")


def test_every_flops_column_of_the_sweep_summary_is_labelled_and_explained():
    text = render(_summary(), STATE, "summary.parquet")
    lines = text.splitlines()
    header = lines[1].split()
    legend = " ".join(lines[4:-1])
    assert ["MoE@k", "MoE_routed", "model_FLOPs"] == [h for h in header if h in {l for l, _ in FLOPS_COLUMNS.values()}]
    assert "MoE_measured" not in header  # nothing measured: the column would be all "-"
    for label in ("MoE@k", "MoE_routed", "model_FLOPs"):
        assert f"{label} = " in legend, legend
    assert "MoE_measured = " not in legend
    kneedle = lines[3].split()
    routed = header.index("MoE_routed")
    assert (kneedle[header.index("MoE@k")], kneedle[routed]) == ("51,200", "48,120")
    assert UNITS in " ".join(lines)  # the unit convention, once
    assert " ".join(lines).count("Counts:") == 1


def test_whole_model_line_names_the_batch_that_ran_not_the_configured_one():
    run = RunRecord(topk=2, moe_layers=2, batch_size=8, seq_len=128, blocks=2, tokens=256,
                    flops_per_token_analytic=51200.0, model_flops_per_token_analytic=199040.0, model_flops_exact=True)
    assert "FLOPs/token at 2x128 (MoE" in job_summary(run, "olmoe_tiny", "results")
    full = RunRecord(**{**run.as_row(), "blocks": 38})
    assert "FLOPs/token at 8x128 (MoE" in job_summary(full, "olmoe_tiny", "results")


def test_a_dynamic_selectors_analytic_count_says_it_is_at_k_max():
    run = RunRecord(topk=4, moe_layers=2, selector="kneedle", k_mean=2.5, flops_per_token_analytic=100352.0,
                    flops_per_token_routed=63488.0)
    line = next(l for l in job_summary(run, "olmoe_tiny", "results").splitlines() if "MoE FLOPs/token" in l)
    assert "analytic 100,352 at k_max=4, routed 63,488 (mean k 2.50)" in line
    own = RunRecord(topk=2, moe_layers=2, selector="router", flops_per_token_analytic=51200.0)
    assert "analytic 51,200;" in job_summary(own, "olmoe_tiny", "results")
