"""Numbers that would be silently wrong are refused or flagged: non-finite routers, model names that merge in the
partition, a comparison that compared nothing, a resumed sweep's reused results, placement settings that would be
dropped or run for hours."""
from __future__ import annotations

import pytest

from helpers.jobs import latest_run, moe_flops, run_job, table
from runner import results


# -- NaN router scores are a failed job with one line, never imbalance stored as real --------------------------------
def test_non_finite_router_scores_fail_the_job(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run_job(tmp_path, "+model.config.rms_norm_eps=-1.0", "max_batches=1", "seq_len=32")
    message = str(exit_info.value)
    assert message.startswith("runner: error: non-finite router scores (NaN or inf) in MoE layer(s) 0, 1 and loss nan")
    assert not (tmp_path / "results" / "table=layers").exists()


def test_non_finite_router_scores_are_a_failed_row_when_recorded(tmp_path):
    with pytest.raises(SystemExit, match="non-finite router scores"):
        run_job(tmp_path, "+model.config.rms_norm_eps=-1.0", "max_batches=1", "seq_len=32", "on_error=record")
    row = latest_run(tmp_path)
    assert row["status"] == "failed" and row["error_type"] == "NumericsError"


# -- long model names keep their own partition ------------------------------------------------------------------------
def test_long_model_names_do_not_merge(tmp_path):
    first, second = "m" * 45 + "_first", "m" * 45 + "_second"
    for name in (first, second):
        assert run_job(tmp_path, f"model.name={name}", "max_batches=1", "seq_len=32")["status"] == "ok"
    assert sorted(table(tmp_path, "runs")["model"].astype(str)) == [first, second]
    assert sorted(table(tmp_path, "layers")["model"].astype(str).unique()) == [first, second]
    with pytest.raises(SystemExit, match="model.name: '" + "x" * 101 + "' is 101 characters; use at most 100"):
        run_job(tmp_path, "model.name=" + "x" * 101)


def test_an_unvalidated_long_name_gets_a_partition_that_cannot_collide():
    from runner.results.io import model_partition

    a, b = "x" * 120 + "a", "x" * 120 + "b"
    assert model_partition("olmoe_tiny") == "olmoe_tiny"
    assert model_partition(a) != model_partition(b) and len(model_partition(a)) <= 100
    assert "/" not in model_partition("../../etc") and model_partition("../../etc") != "../../etc"


# -- load() after resume=true: the latest complete result of each job ----------------------------------------------
def test_load_after_resume_returns_the_reused_results(run_sweep, tmp_path):
    small = ("max_batches=1", "seq_len=32")
    with run_sweep(tmp_path, "topk=1,2", *small, name="first"):
        pass
    with run_sweep(tmp_path, "topk=1,2", "resume=true", *small, name="first") as again:
        assert [r.return_value["status"] for r in again.returns[0]] == ["skipped", "skipped"]
    sweep = results.sweep_id_for(tmp_path / "first")  # the fixture removes the sweep dir on exit
    runs = results.load("runs", sweep=sweep, results_dir=tmp_path / "results")
    assert list(runs["job_num"]) == [0, 1] and list(runs["status"]) == ["skipped", "skipped"]
    assert runs["loss"].notna().all() and list(runs["flops_per_token_analytic"]) == [moe_flops(1), moe_flops(2)]
    layers = results.load("layers", sweep=sweep, results_dir=tmp_path / "results")
    assert set(layers["run_id"]) == set(runs["run_id"]) and len(layers) >= 4  # 2 jobs x 2 MoE layers (prefill)
    pivot = runs.pivot_table(index="topk", values="flops_per_token_analytic")
    assert list(pivot.index) == [1, 2]


# -- a comparison that compared nothing, or lost jobs, does not pass --------------------------------------------------
def test_compare_with_no_job_in_common_fails(tmp_path, capsys):
    from runner.baseline.sweep_compare import main as compare

    for side, k in (("a", 1), ("a", 2), ("b", 4)):
        assert run_job(tmp_path / side, f"topk={k}", "max_batches=1", "seq_len=32")["status"] == "ok"
    a, b = str(tmp_path / "a" / "results"), str(tmp_path / "b" / "results")
    assert compare([a, b]) == 1
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == (
        "compare FAILED: 0 matched job(s): A and B have no job in common, nothing was compared (2 only in A, 1 only "
        "in B); compare sweeps of the same jobs")
    assert run_job(tmp_path / "b", "topk=1", "max_batches=1", "seq_len=32")["status"] == "ok"
    assert compare([a, b]) == 1  # A's k=2 job is missing from B
    assert capsys.readouterr().out.rstrip().endswith(
        "1 only in A, 1 only in B (a job of A missing from B is a difference; --allow-missing accepts it)")
    assert compare([a, b, "--allow-missing"]) == 0


# -- explicit placement settings that would be dropped or run for hours ----------------------------------------------
@pytest.mark.parametrize("override,needle", [
    ("analysis.ep_sizes=[3]", "analysis.ep_sizes: 3 does not divide the 8 experts of model 'olmoe_tiny'; use divisors "
                              "such as 2, 4, 8"),
    ("analysis.redundant_experts=[2000000000]", "analysis.redundant_experts: 2000000000 exceeds the 8 experts"),
])
def test_placement_settings_that_cannot_apply_are_refused(tmp_path, override, needle):
    with pytest.raises(SystemExit, match=needle.replace("(", r"\(")):
        run_job(tmp_path, "analysis=full", override, "max_batches=1", "seq_len=32")


def test_the_library_bounds_redundant_experts_and_warns_on_dropped_ep_sizes():
    import numpy as np

    from runner.profiler import placement

    with pytest.raises(ValueError, match="between 0 and the 8 experts, got 2000000000"):
        placement.balanced(np.ones(8), 2, 2_000_000_000)


def test_the_library_warns_of_non_finite_router_scores():
    import torch

    from helpers.tiny_configs import build_tiny_model
    from runner import MOEProfiler

    model = build_tiny_model("olmoe", rms_norm_eps=-1.0)
    with MOEProfiler(model, verbose=False) as profiler:
        with torch.no_grad():
            model(input_ids=torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(0)))
        with pytest.warns(UserWarning, match=r"MoE layer\(s\) 0, 1, 2, 3: non-finite router scores \(NaN or inf\)"):
            profiler.layers_df()
