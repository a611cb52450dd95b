"""The standard balance family (max/mean, MaxVio, CV, Jain, Gini, load entropy, dead / cold experts), distinct experts
per router call against the uniform formula, and the random-routing baselines of co-activation, transitions and
Jaccard: each against a hand computation on small vectors, then on a tiny real model."""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from runner import MOEProfiler
from runner.job.analysis_tables import layer_percentiles
from runner.profiler.metrics import expected_distinct, jaccard_uniform, layer_metrics, load_balance
from runner.profiler.accumulators import RoutingRecorder
from helpers.tiny_configs import build_tiny_model


def test_balance_family_by_hand():
    b = load_balance(np.array([3, 1, 0, 0]), 4)  # mean 1, deviations 2, 0, -1, -1
    assert b["load_max_mean"] == 3.0 and b["load_maxvio"] == 2.0
    assert b["load_cv"] == pytest.approx(math.sqrt(6 / 4))  # population variance (4 + 0 + 1 + 1) / 4
    assert b["load_jain"] == pytest.approx(16 / (4 * 10))  # (sum c)^2 / (E sum c^2)
    assert b["load_jain"] == pytest.approx(1 / (1 + b["load_cv"] ** 2))
    assert b["load_gini"] == pytest.approx(2 * (3 * 1 + 4 * 3) / (4 * 4) - 5 / 4)  # sorted 0, 0, 1, 3
    assert b["load_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4))
    assert b["dead_experts"] == 2 and b["cold_experts"] == 2
    cold = load_balance(np.array([97, 2, 1, 0]), 4)  # shares below 0.1 / 4 = 0.025: 0.02, 0.01 and 0
    assert cold["cold_experts"] == 3 and cold["dead_experts"] == 1
    even = load_balance(np.array([5, 5, 5, 5]), 4)
    assert even["load_jain"] == 1.0 and even["load_gini"] == 0.0 and even["load_maxvio"] == 0.0
    assert even["load_entropy"] == pytest.approx(1.0) and even["cold_experts"] == 0


def test_jaccard_uniform_is_the_exact_hypergeometric_mean():
    # E = 4, |A| = |B| = 2: |A & B| = 0, 1, 2 with probability 1/6, 4/6, 1/6; Jaccard 0, 1/3, 1
    assert jaccard_uniform([0, 0, 1], [0, 0, 1], 4) == pytest.approx(4 / 6 / 3 + 1 / 6)
    # |A| = 1 or 2 (even odds), |B| = 2: a = 1 gives |A & B| = 1 with probability 1/2, Jaccard 1/2
    assert jaccard_uniform([0, 5, 5], [0, 0, 3], 4) == pytest.approx((1 / 4 + 7 / 18) / 2)
    # an empty pair of sets is left out (as in jaccard_next); an empty set against a nonempty one scores 0
    assert jaccard_uniform([1, 0, 1], [1, 0, 1], 4) == pytest.approx((0 + 0 + 7 / 18) / 3)
    assert math.isnan(jaccard_uniform([0, 0], [0, 0], 4))
    # the same by sampling (a seeded check that the closed form is the expectation, not the ratio of expectations)
    rng = np.random.default_rng(0)
    E, k, n = 8, 3, 200_000
    a = np.argsort(rng.random((n, E)), 1)[:, :k]
    b = np.argsort(rng.random((n, E)), 1)[:, :k]
    inter = (np.sort(a, 1)[:, :, None] == np.sort(b, 1)[:, None, :]).sum((1, 2))
    sampled = (inter / (2 * k - inter)).mean()
    exact = jaccard_uniform(np.eye(k + 1)[k], np.eye(k + 1)[k], E)
    assert sampled == pytest.approx(exact, abs=3e-3)
    megatron = (k * k / E) / (2 * k - k * k / E)  # Megatron's ratio of expectations: close, not equal
    assert abs(exact - megatron) > 1e-3


def test_expected_distinct_by_hand():
    assert expected_distinct(4, 2, 1) == 2.0
    assert expected_distinct(4, 2, 2) == pytest.approx(3.0)  # the second token's two picks are new with odds 1/2
    assert expected_distinct(64, 8, 10_000) == pytest.approx(64.0)


# call 1: T = 4, loads [4, 2, 1, 1]: 4 experts; call 2: T = 2, loads [2, 2, 0, 0]: 2; call 3: one token, one slot
# dropped: 1. Uniform: 4 (1 - (1 - 2/4)^4) = 3.75, 4 (1 - (1 - 2/4)^2) = 3, 4 (1 - (1 - 1/4)^1) = 1
CALLS = [torch.tensor([[0, 1], [0, 1], [0, 2], [0, 3]]), torch.tensor([[0, 1], [0, 1]]), torch.tensor([[2, 4]])]


@pytest.mark.parametrize("capacity", [64, 2], ids=["staged-together", "flushed-between"])
def test_distinct_experts_per_call_by_hand(capacity):
    rec = RoutingRecorder(1, router_width=4, num_experts=[4], scoring="softmax", capacity=capacity,
                          analyses=("capacity",))
    for index in CALLS:
        rec.record(0, torch.zeros(len(index), 4), index, torch.ones(index.shape))
    metrics = layer_metrics(rec.snapshot(), 0, 4, 4, 2)
    assert metrics["distinct_experts_per_call"] == pytest.approx(7 / 3)
    assert metrics["distinct_experts_uniform"] == pytest.approx((3.75 + 3 + 1) / 3)
    off = RoutingRecorder(1, router_width=4, num_experts=[4], scoring="softmax", analyses=())
    off.record(0, torch.zeros(2, 4), CALLS[1], torch.ones(2, 2))
    assert "distinct_experts_per_call" not in layer_metrics(off.snapshot(), 0, 4, 4, 2)


def test_layer_percentiles_by_hand():
    layers = pd.DataFrame(dict(load_max_mean=[1.0, 2.0, 3.0, 4.0, 5.0], load_cv=[0.1] * 5,
                               load_jain=[1.0, 0.5, 0.5, 0.5, 0.25]))
    got = layer_percentiles(layers)
    assert got["load_max_mean_p50"] == 3.0 and got["load_max_mean_p95"] == pytest.approx(4.8)  # 4 + 0.8 * (5 - 4)
    assert got["load_jain_p05"] == pytest.approx(0.25 + 0.2 * 0.25) and got["load_cv_p95"] == pytest.approx(0.1)
    assert "load_entropy_p50" not in got  # not in the frame


def test_random_baselines_on_a_tiny_model():
    model = build_tiny_model("olmoe", num_hidden_layers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = MOEProfiler(model, verbose=False, analyses=("capacity", "coactivation", "transitions"))
    with torch.no_grad():
        model(input_ids=torch.randint(2, 128, (2, 8), generator=torch.Generator().manual_seed(0)))
    layers, E = p.layers_df(), p.layers[0].num_experts
    k = int(layers["top_k"].iloc[0])
    co = p.coactivation_df()
    for layer, group in co.groupby("layer"):
        tokens = int(layers.loc[layers["layer"] == layer, "tokens"].iloc[0])
        expected = tokens * k * (k - 1) / (E * (E - 1))  # every token's k (k - 1) ordered pairs, spread evenly
        np.testing.assert_allclose(group["count_random"], expected)
        np.testing.assert_allclose(group["lift"], group["count"] / expected)
    flow = p.transitions_df()
    tokens = int(layers["tokens"].iloc[0])
    np.testing.assert_allclose(flow["count_random"], tokens * k * k / (E * E))
    hist = np.eye(k + 1)[k]
    assert layers["jaccard_random"].iloc[0] == pytest.approx(jaccard_uniform(hist, hist, E))
    assert math.isnan(layers["jaccard_random"].iloc[1])  # the last MoE layer has no next
    # one forward of 16 tokens per layer: one call
    assert layers["distinct_experts_uniform"].iloc[0] == pytest.approx(expected_distinct(E, k, 16))
    assert 1 <= layers["distinct_experts_per_call"].iloc[0] <= E
