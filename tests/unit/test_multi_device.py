"""A model split over devices by accelerate's device map (dispatch_model), profiled exactly as on one device.

On a CPU-only machine the real split is CPU + disk offload: the offloaded layers keep their weights on the meta device
between calls and accelerate's hooks bring them back for each forward. The profiler must find where each layer runs
(not `meta`), keep its accumulators there, and record the same counts, FLOPs (analytic and measured) and loss as the
unsplit model with the same weights.
"""
from __future__ import annotations

import math

import pytest
import torch
from pandas.testing import assert_frame_equal

from helpers.tiny_configs import build_tiny_model
from runner import MOEProfiler
from runner.profiler.evaluate import evaluate

accelerate = pytest.importorskip("accelerate")

# olmoe tiny: 4 decoder layers, each a MoE layer; layers 1 and 2 offloaded to disk
SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
         "model.layers.3": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 128, (2, 16), generator=g) for _ in range(n)]


def profile(model):
    profiler = MOEProfiler(model, verbose=False, analyses=("capacity", "transitions"))
    try:
        result = evaluate(model, profiler, batches(), reference=False, measure_flops="all")
        return dict(result=result, devices=[str(d) for d in profiler.devices], layers=profiler.layers_df(),
                    experts=profiler.experts_df(), transitions=profiler.transitions_df(),
                    analytic=profiler.flops_per_token(), params=profiler.param_counts(),
                    placed=[str(g.counts.device) for g in profiler.recorder.groups])
    finally:
        profiler.detach()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    whole = profile(build_tiny_model("olmoe"))
    split_model = accelerate.dispatch_model(build_tiny_model("olmoe"), SPLIT,
                                            offload_dir=str(tmp_path_factory.mktemp("offload")))
    assert split_model.model.layers[1].mlp.gate.weight.device.type == "meta"  # really offloaded between calls
    return whole, profile(split_model)


def test_offloaded_layers_are_recorded_where_they_run_not_on_meta(runs):
    whole, split = runs
    assert split["devices"] == whole["devices"] == ["cpu"] * 4
    assert split["placed"] == ["cpu"]  # one accumulator group, on the execution device
    assert list(split["layers"]["device"]) == ["cpu"] * 4


def test_counts_flops_and_loss_equal_the_unsplit_model(runs):
    whole, split = runs
    assert (split["layers"]["tokens"] == 96).all()  # 3 batches x 2 x 16 tokens, at every layer
    keys = ["phase", "layer", "tokens", "assignments", "k_hist", "flops", "flops_measured", "drop_rate_cf1_0",
            "jaccard_next"]
    assert_frame_equal(split["layers"][keys], whole["layers"][keys])
    assert split["layers"]["flops_measured"].gt(0).all()
    assert split["experts"]["tokens"].tolist() == whole["experts"]["tokens"].tolist()
    assert len(split["transitions"]) and split["transitions"].equals(whole["transitions"])
    assert split["analytic"].equals(whole["analytic"]) and split["params"] == whole["params"]
    a, b = whole["result"], split["result"]
    assert (a.tokens, a.targets, a.measured_tokens) == (b.tokens, b.targets, b.measured_tokens) == (96, 90, 96)
    assert math.isclose(a.loss, b.loss, rel_tol=1e-6)
