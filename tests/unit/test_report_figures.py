"""The report's figures from the library's own frames, before any results table holds them: a tiny real OLMoE
profiled with capacity, co-activation and transitions on, its frames drawn and decoded as PNGs; the expert-load
heatmap of a DeepSeek-V3-sized layout (256 experts x 58 layers) stays 64 columns wide; the Pareto front by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.tiny_configs import build_tiny_model
from runner import MOEProfiler
from runner.report import analysis_figures as analyses, quality, routing_figures as routing
from runner.report.figures import DPI, pareto, save


@pytest.fixture(scope="module")
def frames():
    model = build_tiny_model("olmoe")
    with MOEProfiler(model, analyses=("capacity", "coactivation", "transitions"), verbose=False) as profiler:
        with torch.no_grad():
            model(input_ids=torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0)))
        layers = profiler.layers_df().assign(series="router")
        return dict(layers=layers, experts=profiler.experts_df(), coactivation=profiler.coactivation_df(),
                    placement=profiler.placement_df())


def decoded(fig, path):
    from PIL import Image

    save(fig, path)
    with Image.open(path) as image:
        image.load()
        return image.size


def test_analysis_figures_from_the_library_frames(frames, tmp_path):
    layers = frames["layers"]
    assert layers["drop_rate_cf1_0"].notna().all() and layers["jaccard_next"].notna().any()
    figures = {"coactivation": analyses.coactivation(frames["coactivation"], 8, layer=1),
               "jaccard": analyses.jaccard(layers), "drop-rate": analyses.drop_rates(layers),
               "placement": analyses.placement(frames["placement"]),
               "expert-load": routing.load_heatmap(frames["experts"], "expert load"),
               "layer-metrics": routing.layer_metrics(layers, 2)}
    for name, fig in figures.items():
        width, height = decoded(fig, tmp_path / f"{name}.png")
        assert width >= 400 and height >= 200, name
    assert analyses.chosen_layer(frames["coactivation"]) == 2  # the middle of the 4 MoE layers
    assert analyses.capacity_factors(layers.columns) == [(1.0, "drop_rate_cf1_0"), (1.25, "drop_rate_cf1_25"),
                                                         (1.5, "drop_rate_cf1_5"), (2.0, "drop_rate_cf2_0")]
    assert analyses.jaccard(layers.assign(jaccard_next=None)) is None  # not recorded: no figure
    assert analyses.placement(None) is None and analyses.coactivation(None) is None


def test_a_large_expert_load_heatmap_groups_ranks(tmp_path):
    rng = np.random.default_rng(0)
    experts = pd.DataFrame([(layer, expert, int(rng.integers(0, 1000)) if expert % 50 else 0)
                            for layer in range(3, 61) for expert in range(256)], columns=["layer", "expert", "tokens"])
    layers, relative, group = routing.ranked_loads(experts)
    assert (len(layers), relative.shape, group) == (58, (58, 64), 4)
    assert np.all(np.diff(relative, axis=1) <= 0)  # ranked: busiest first
    assert relative.mean(axis=1) == pytest.approx(np.ones(58))  # relative to the layer's mean load
    width, height = decoded(routing.load_heatmap(experts, "256 experts"), tmp_path / "large.png")
    assert (width, height) == (9 * DPI, round(9.5 * DPI))  # 9 x 9.5 inches: 64 columns, 58 rows


def test_pareto_front_by_hand():
    flops = [1, 2, 3, 4, 2]
    loss = [5.0, 4.0, 4.5, 3.0, 4.0]
    assert pareto(flops, loss) == [True, True, False, True, True]  # (3, 4.5) is beaten by (2, 4.0); ties both stay
    assert pareto([1, float("nan")], [1, 0]) == [True, False]
    # with intervals: (2, 4.0 ± 0.6) overlaps (1, 5.0 ± 0.5), so it is not shown to beat the cheaper point; (4, 3.0 ±
    # 0.2) is below every cheaper interval; the last point's NaN interval falls back to its value 4.0, below 4.5
    low, high = [4.5, 3.4, 4.0, 2.8, float("nan")], [5.5, 4.6, 5.0, 3.2, float("nan")]
    assert pareto(flops, loss, low, high) == [True, False, False, True, True]
    assert pareto([1, 2], [5.0, 4.0], [4.9, 3.9], [5.1, 4.1]) == [True, True]  # apart: both on the front


def test_task_accuracy_and_decode_timing_figures(tmp_path):
    """The tasks table (another helper's; its columns are fixed) and TTFT / TPOT, drawn when present."""
    from runner.report import quality

    runs = pd.DataFrame(dict(run_id=["a", "b", "c", "d"], status="ok", series=["router", "router", "kneedle",
                                                                                "kneedle"],
                             topk=[2, 4, 2, 4], flops_per_token_routed=[51200.0, 100352.0, 48120.0, 78007.0],
                             tokens_per_s=[1e5, 8e4, 9e4, 7e4], ttft_ms=[3.0, 4.0, 3.5, 4.5],
                             tpot_ms=[1.0, 1.2, 1.1, 1.3]))
    tasks = pd.DataFrame(dict(run_id=["a", "b", "c", "d"], task="arc_easy", metric="acc", topk=[2, 4, 2, 4],
                              value=[0.5, 0.6, 0.52, 0.58], stderr=0.01, n=100))  # tasks rows carry the key columns
    assert decoded(quality.tasks(runs, tasks), tmp_path / "tasks.png")[0] >= 400
    fig = quality.speed(runs)
    assert [ax.get_title() for ax in fig.axes] == ["tokens/s (prefill)", "TTFT ms", "TPOT ms"]
    assert quality.tasks(runs, None) is None and quality.speed(runs.drop(columns=["tokens_per_s", "ttft_ms",
                                                                                    "tpot_ms"])) is None


def test_cache_figure_one_panel_per_layer_group(tmp_path):
    from runner.results import cache_replay as cache

    rng = np.random.default_rng(0)
    trace = pd.DataFrame([dict(phase=phase, layer=layer, batch=0, row=row, position=position,
                               experts=rng.choice(8, 2, replace=False))
                          for phase in ("prefill", "decode") for layer in range(6) for row in range(2)
                          for position in range(12)])
    rows = cache.cache_frame(trace, {layer: 8 for layer in range(6)})
    assert analyses.layer_groups(list(range(6))) == [[0, 1], [2, 3], [4], [5]]
    fig = analyses.cache_curves(rows)
    assert len(fig.axes) == 4 and len(fig.axes[0].lines) == 6  # 3 policies x 2 phases
    width, height = decoded(fig, tmp_path / "cache.png")
    assert width >= 400 and height >= 200
    assert analyses.cache_curves(None) is None


def test_frontier_draws_the_intervals_and_rings_by_them():
    runs = pd.DataFrame(dict(status="ok", loss=[5.0, 4.0, 3.0], kl=[0.0, 0.1, 0.05], flops_per_token_routed=[1, 2, 4],
                             topk=[1, 2, 4], series=["a", "a", "b"], loss_ci_low=[4.5, 3.4, 2.8],
                             loss_ci_high=[5.5, 4.6, 3.2], kl_ci_low=[0.0, 0.05, 0.01], kl_ci_high=[0.0, 0.2, 0.1]),
                        index=[7, 3, 5])
    fig = quality.frontier(runs)
    loss_panel = fig.axes[0]
    bars = [c for c in loss_panel.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars) == 2  # one per series
    ringed = next(c for c in loss_panel.collections if c.get_label() == "Pareto-optimal").get_offsets()
    assert sorted(map(tuple, np.asarray(ringed).tolist())) == [(1.0, 5.0), (4.0, 3.0)]  # (2, 4.0 ± 0.6) overlaps
