"""Routing analyses beyond load balance: top-k boundary margin, capacity-factor drops, co-activation and expert-parallel
placement frames. Hand-made routing through the recorder, then a tiny real model."""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from runner import MOEProfiler, ProfilerError
from runner.profiler import Analyses
from runner.profiler.metrics import drop_rates, layer_metrics
from runner.profiler.accumulators import RoutingRecorder
from helpers.tiny_configs import build_tiny_model


def recorder(**kwargs):
    return RoutingRecorder(1, router_width=4, num_experts=[4], scoring="softmax", capacity=64, **kwargs)


def logits_of(*rows):
    return torch.log(torch.tensor(rows, dtype=torch.float32))


def metrics_of(rec, top_k=2):
    return layer_metrics(rec.snapshot(), 0, 4, 4, top_k)


def test_boundary_margin_by_hand():
    rec = recorder()
    logits = logits_of([0.5, 0.3, 0.15, 0.05],  # S = {0, 1}: (0.3 - 0.15) / 0.3 = 0.5
                       [0.4, 0.3, 0.2, 0.1],  # S = {0, 2} (not the top 2): (0.2 - 0.3) / 0.2 = -0.5
                       [0.1, 0.2, 0.3, 0.4])  # S = {3}, one slot dropped (sentinel 4): (0.4 - 0.3) / 0.4 = 0.25
    index = torch.tensor([[0, 1], [0, 2], [3, 4]])
    rec.record(0, logits, index, torch.ones(3, 2))
    assert metrics_of(rec)["topk_boundary_margin"] == pytest.approx(0.25 / 3, rel=1e-5)


def test_boundary_margin_skips_tokens_without_a_boundary():
    rec = recorder()
    logits = logits_of([0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.2, 0.1])
    # token 2: nothing selected; token 3: every expert selected: neither has a boundary
    rec.record(0, logits[:2], torch.tensor([[0, 1], [4, 4]]), torch.ones(2, 2))
    rec.record(0, logits[2:], torch.tensor([[0, 1, 2, 3]]), torch.ones(1, 4))
    sums = rec.snapshot()["sums"][0]
    assert sums[5] == 1  # boundary_tokens
    assert metrics_of(rec)["topk_boundary_margin"] == pytest.approx(0.5, rel=1e-5)


# call 1: T=4, k=2, E=4: loads [4, 2, 1, 1], T*k/E = 2
# call 2: T=2: loads [2, 2, 0, 0], T*k/E = 1
# call 3: T=1, one slot dropped (sentinel): loads [0, 0, 1, 0], T*k/E = 0.5
CALLS = [torch.tensor([[0, 1], [0, 1], [0, 2], [0, 3]]), torch.tensor([[0, 1], [0, 1]]), torch.tensor([[2, 4]])]
# cf 1.0:  C = 2, 1, 1     -> drops 2 + 2 + 0 = 4   (pooled into one batch of 7 tokens, C = ceil(3.5) = 4 and
#                                                    loads [6, 4, 2, 1] would give 2)
# cf 1.25: C = 3, 2, 1     -> 1 + 0 + 0 = 1
# cf 1.5:  C = 3, 2, 1     -> 1
# cf 2.0:  C = 4, 2, 1     -> 0;  sum of T * k = 8 + 4 + 2 = 14
DROPS_BY_HAND = {"drop_rate_cf1_0": 4 / 14, "drop_rate_cf1_25": 1 / 14, "drop_rate_cf1_5": 1 / 14,
                 "drop_rate_cf2_0": 0.0}


def record_calls(rec, calls=CALLS):
    for index in calls:
        rec.record(0, torch.zeros(len(index), 4), index, torch.ones(index.shape))


@pytest.mark.parametrize("capacity", [64, 2], ids=["staged-together", "flushed-between"])
def test_capacity_drops_per_call_by_hand(capacity):
    """The eager path stages the three calls together (capacity 64) or not: drops are per call either way."""
    rec = RoutingRecorder(1, router_width=4, num_experts=[4], scoring="softmax", capacity=capacity,
                          analyses=("capacity",))
    record_calls(rec)
    snap = rec.snapshot()
    assert snap["drops"][0].tolist() == [4, 1, 1, 0, 14]
    assert drop_rates(snap, 0) == DROPS_BY_HAND
    assert metrics_of(rec)["tokens"] == 7


def test_capacity_factors_are_configurable_and_can_be_off():
    rec = recorder(analyses=Analyses(capacity_factors=(1.0, 3.0)))
    record_calls(rec)
    assert drop_rates(rec.snapshot(), 0) == {"drop_rate_cf1_0": 4 / 14, "drop_rate_cf3_0": 0.0}
    off = recorder(analyses=())
    record_calls(off)
    assert "drops" not in off.snapshot() and drop_rates(off.snapshot(), 0) == {}
    assert [name for g in off.groups for name, t in g.named_buffers() if t.numel() == 0] == [
        "drops", "distinct", "coactivation", "factors", "transitions", "jaccard", "selection", "selection_tokens",
        "lookahead", "prediction", "prediction_tokens", "vocab", "token_ids", "token_count"]  # all off


def test_analyses_names():
    assert Analyses.of(None) == Analyses() and Analyses().coactivation is False
    assert Analyses.of(("coactivation",)) == Analyses(capacity_factors=(), coactivation=True)
    assert Analyses.of(["capacity", "coactivation"]).capacity_factors == (1.0, 1.25, 1.5, 2.0)
    assert Analyses.of("transitions") == Analyses(capacity_factors=(), transitions=True)
    with pytest.raises(ValueError, match="unknown analyses"):
        Analyses.of(("capacity", "coactivations"))


def test_coactivation_by_hand():
    rec = RoutingRecorder(1, router_width=4, num_experts=[4], scoring="softmax", capacity=64,
                          analyses=("coactivation",))
    index = torch.tensor([[0, 1, 2], [0, 1, 3], [2, 3, 4]])  # last token: one slot dropped (sentinel)
    rec.record(0, torch.zeros(2, 4), index[:2], torch.ones(2, 3))
    rec.record(0, torch.zeros(1, 4), index[2:], torch.ones(1, 3))
    matrix = rec.snapshot()["coactivation"][0]
    assert matrix.tolist() == [[2, 2, 1, 1],
                               [2, 2, 1, 1],
                               [1, 1, 2, 1],
                               [1, 1, 1, 2]]
    assert np.diag(matrix).tolist() == rec.snapshot()["counts"][0].tolist()


def test_coactivation_grows_with_phases_and_resets():
    rec = RoutingRecorder(1, router_width=4, num_experts=[4], scoring="softmax", analyses=("coactivation",))
    rec.record(0, torch.zeros(1, 4), torch.tensor([[0, 1]]), torch.ones(1, 2))
    rec.set_phase("score")  # a new phase: the accumulators are reallocated, what was recorded is carried over
    rec.record(0, torch.zeros(1, 4), torch.tensor([[2, 3]]), torch.ones(1, 2))
    phases = rec.read_phases()
    assert phases["prefill"]["coactivation"][0][0, 1] == 1 and phases["score"]["coactivation"][0][2, 3] == 1
    assert phases["prefill"]["coactivation"][0][2, 3] == 0
    rec.reset()
    assert not rec.snapshot()["coactivation"].any()


# -- a tiny real model --------------------------------------------------------------------------------------------

def tiny_profile(**kwargs):
    model = build_tiny_model("olmoe", num_hidden_layers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profiler = MOEProfiler(model, verbose=False, **kwargs)
    with torch.no_grad():
        for seed in range(2):
            model(input_ids=torch.randint(2, 128, (2, 8), generator=torch.Generator().manual_seed(seed)))
    return model, profiler


def test_tiny_model_columns_and_coactivation_invariant():
    model, p = tiny_profile(analyses=("capacity", "coactivation"))
    df = p.layers_df()
    k = int(df["top_k"].iloc[0])
    for cf in ("1.0", "1.25", "1.5", "2.0"):
        assert df[f"drop_rate_cf{cf}".replace(".", "_")].between(0, 1).all()
    assert (df["drop_rate_cf1_0"] >= df["drop_rate_cf2_0"]).all() and (df["drop_rate_cf1_0"] > 0).any()
    assert df["topk_boundary_margin"].between(0, 1).all()  # native top-k: the selected are the most probable
    loads = p.experts_df().set_index(["phase", "layer", "expert"])["tokens"]
    co = p.coactivation_df()
    assert list(co.columns) == ["phase", "layer", "expert_a", "expert_b", "count", "count_random", "lift"]
    assert (co["expert_a"] != co["expert_b"]).all() and (co["count"] > 0).all()
    row_sums = co.groupby(["phase", "layer", "expert_a"])["count"].sum()
    for (phase, layer, expert), total in row_sums.items():  # fixed k, no drops: sum_{b != a} C[a, b] = (k - 1) c_a
        assert total == (k - 1) * loads[(phase, layer, expert)]
    assert len(row_sums) == int((loads > 0).sum())  # every expert with load pairs with someone (k >= 2)
    symmetric = co.merge(co, left_on=["phase", "layer", "expert_a", "expert_b"],
                         right_on=["phase", "layer", "expert_b", "expert_a"])
    assert len(symmetric) == len(co) and (symmetric["count_x"] == symmetric["count_y"]).all()


def test_capacity_drops_on_a_tiny_model_equal_numpy_per_call():
    """Re-derive each call's drops from the routing the router returned (captured by a hook of our own)."""
    model = build_tiny_model("olmoe", num_hidden_layers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = MOEProfiler(model, verbose=False, analyses=("capacity",))
    router = p.layers[0].router
    seen = []
    handle = router.register_forward_hook(lambda m, a, out: seen.append(
        next(t for t in out if not t.is_floating_point()).detach().clone()))
    with torch.no_grad():
        for batch, seq in ((2, 8), (1, 3), (3, 1)):
            model(input_ids=torch.randint(2, 128, (batch, seq), generator=torch.Generator().manual_seed(seq)))
    handle.remove()
    E = p.layers[0].num_experts
    dropped, slots = np.zeros(4), 0
    for index in seen:
        counts = np.bincount(index.flatten().numpy(), minlength=E)
        T, k = index.shape
        for i, cf in enumerate((1.0, 1.25, 1.5, 2.0)):
            dropped[i] += np.maximum(0, counts - math.ceil(T * k / E * cf)).sum()
        slots += T * k
    row = p.layers_df().iloc[0]
    assert [row[f"drop_rate_cf{cf}".replace(".", "_")] for cf in ("1.0", "1.25", "1.5", "2.0")] == list(dropped / slots)


def test_coactivation_df_needs_the_analysis():
    _, p = tiny_profile()  # the defaults: the boundary margin only (capacity drops are opt-in)
    assert "topk_boundary_margin" in p.layers_df() and not any(c.startswith("drop_rate") for c in p.layers_df())
    with pytest.raises(ProfilerError, match="co-activation is not recorded"):
        p.coactivation_df()
    _, on = tiny_profile(analyses=("capacity",))
    assert "drop_rate_cf1_0" in on.layers_df()


def test_placement_df_scores_each_layers_loads():
    _, p = tiny_profile()
    df = p.placement_df(ep_sizes=(2, 4), redundant=(1,))
    assert list(df.columns) == ["phase", "layer", "ep_size", "placement", "fitted_on", "imbalance", "balancedness",
                                "busiest_rank_tokens", "expert_ranks"]
    E = p.layers[0].num_experts
    assert len(df) == 2 * 2 * 4  # layers x ep sizes x (contiguous, round_robin, balanced, balanced+r1)
    assert set(df["placement"]) == {"contiguous", "round_robin", "balanced", "balanced+r1"}
    loads = p.experts_df().query("layer == 0")["tokens"].to_numpy()
    row = df.query("layer == 0 and ep_size == 2 and placement == 'contiguous'").iloc[0]
    halves = [loads[: E // 2].sum(), loads[E // 2:].sum()]
    assert row["busiest_rank_tokens"] == max(halves)
    assert row["imbalance"] == pytest.approx(max(halves) / np.mean(halves))
    assert row["expert_ranks"] == [[e * 2 // E] for e in range(E)]
    assert (df["balancedness"] * df["imbalance"]).round(12).eq(1).all()
    balanced = df.set_index(["layer", "ep_size", "placement"])["imbalance"]
    assert (balanced.xs("balanced+r1", level=2) <= balanced.xs("contiguous", level=2) + 1e-12).all()
    default = p.placement_df()
    assert set(default["ep_size"]) == {n for n in (2, 4, 8, 16, 32, 64) if n <= E and E % n == 0}
    assert isinstance(default, pd.DataFrame)


# -- cross-layer transitions ----------------------------------------------------------------------------------------

def two_layers(**kwargs):
    return RoutingRecorder(2, router_width=4, num_experts=[4, 4], scoring="softmax", analyses=("transitions",),
                           **kwargs)


def call(rec, layer, index):
    index = torch.tensor(index)
    rec.record(layer, torch.zeros(len(index), 4), index, torch.ones(index.shape))


def test_transitions_and_jaccard_by_hand():
    rec = two_layers()
    call(rec, 0, [[0, 1], [2, 3]])
    call(rec, 1, [[0, 2], [2, 3]])  # token 1: {0, 1} -> {0, 2}, Jaccard 1/3; token 2: {2, 3} -> {2, 3}, Jaccard 1
    call(rec, 0, [[1, 4]])          # next forward, one token, one slot dropped (sentinel)
    call(rec, 1, [[3, 1]])          # {1} -> {1, 3}: Jaccard 1/2
    call(rec, 0, [[0, 1], [0, 1]])
    call(rec, 1, [[0, 1], [0, 1], [0, 1]])  # not the same tokens (3 vs 2): nothing paired
    snap = rec.snapshot()
    assert snap["transitions"][0].tolist() == [[1, 0, 1, 0],
                                               [1, 1, 1, 1],
                                               [0, 0, 1, 1],
                                               [0, 0, 1, 1]]
    assert not snap["transitions"][1].any()  # the last layer has no next
    total, tokens = snap["jaccard"][0]
    assert tokens == 3 and total == pytest.approx(1 / 3 + 1 + 1 / 2)
    assert layer_metrics(snap, 0, 4, 4, 2)["jaccard_next"] == pytest.approx((1 / 3 + 1.5) / 3)
    assert math.isnan(layer_metrics(snap, 1, 4, 4, 2)["jaccard_next"])


def test_transitions_keep_a_copy_sized_for_the_largest_call():
    rec = two_layers()
    index = torch.tensor([[0, 1], [2, 3]])
    rec.record(0, torch.zeros(2, 4), index, torch.ones(2, 2))
    index[:] = 0  # the router's output is overwritten (a CUDA-graph pool): the kept selection is a copy
    group = rec.groups[0]
    assert group.selection.shape == (2, 2, 4)
    call(rec, 1, [[0, 1], [2, 3]])
    assert rec.snapshot()["jaccard"][0].tolist() == [2.0, 2.0]
    call(rec, 0, [[0, 1]] * 5)
    assert group.selection.shape == (2, 5, 4)  # grown once, for the larger call
    call(rec, 0, [[0, 1]])
    assert group.selection.shape == (2, 5, 4)


def test_transitions_on_a_tiny_model():
    _, p = tiny_profile(analyses=("transitions",))
    df = p.layers_df()
    assert df["jaccard_next"].iloc[0] >= 0 and math.isnan(df["jaccard_next"].iloc[1])
    flow = p.transitions_df()
    assert list(flow.columns) == ["phase", "layer", "next_layer", "expert_a", "expert_b", "count", "count_random",
                                  "lift"]
    assert set(zip(flow["layer"], flow["next_layer"])) == {(0, 1)} and (flow["count"] > 0).all()
    k = int(df["top_k"].iloc[0])
    assert flow["count"].sum() == k * k * df["tokens"].iloc[0]  # every token: k x k pairs
    with pytest.raises(ProfilerError, match="transitions are not recorded"):
        tiny_profile()[1].transitions_df()


def test_lookahead_recall_equals_the_next_router_applied_by_hand():
    """lookahead_recall of layer l: the next layer's router, called by hand on layer l's router input, against the
    experts that layer selected, per token; the last MoE layer has none (NaN)."""
    model = build_tiny_model("olmoe", num_hidden_layers=3)
    routers = [layer.mlp.gate for layer in model.model.layers]
    seen: list[list] = [[] for _ in routers]
    handles = [r.register_forward_hook(lambda m, a, out, i=i: seen[i].append((a[0].detach(), out[2].detach())))
               for i, r in enumerate(routers)]  # olmoe's router returns (logits, weights, indices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = MOEProfiler(model, verbose=False, analyses=("lookahead",))
    with torch.no_grad():
        for seed, shape in ((0, (2, 8)), (1, (3, 1)), (2, (3, 5))):
            model(input_ids=torch.randint(2, 128, shape, generator=torch.Generator().manual_seed(seed)))
    for handle in handles:
        handle.remove()
    layers = p.layers_df().set_index("layer")
    for l in range(len(routers) - 1):
        recalls = []
        with torch.no_grad():
            for (hidden, _), (_, actual) in zip(seen[l], seen[l + 1]):
                predicted = routers[l + 1].forward(hidden)[2]
                predicted, actual = predicted.reshape(-1, predicted.shape[-1]), actual.reshape(-1, actual.shape[-1])
                recalls += [len(set(a.tolist()) & set(b.tolist())) / len(set(a.tolist()))
                            for a, b in zip(actual, predicted)]
        assert layers.loc[l, "lookahead_recall"] == pytest.approx(np.mean(recalls), rel=1e-9)
        assert 0 < layers.loc[l, "lookahead_recall"] < 1
    assert math.isnan(layers.loc[len(routers) - 1, "lookahead_recall"])
    assert "lookahead_recall" not in tiny_profile()[1].layers_df()  # off by default
