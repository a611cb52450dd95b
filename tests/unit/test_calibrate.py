"""Compute-matched selectors: a selector's parameter bisected until the mean k of calibration batches reaches a
target, on a tiny real model; checked against the mean k recounted from a plain profiled run at the value found."""
import warnings

import pytest
import torch

from helpers.tiny_configs import build_tiny_model
from runner import MOEProfiler
from runner.profiler.calibrate import (CALIBRATED, allocate_layer_k, calibrate, calibrate_layer_k, layer_sensitivity,
                                      mean_k)


def batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 128, (2, 16), generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny():
    model = build_tiny_model("olmoe", num_hidden_layers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profiler = MOEProfiler(model, verbose=False)
    yield model, profiler
    profiler.detach()


@pytest.mark.parametrize("selector", sorted(CALIBRATED))
def test_calibrated_mean_k_reaches_the_target(tiny, selector):
    model, profiler = tiny
    calibration, target = batches(3, 0), 2.5
    found = calibrate(model, profiler, calibration, selector, {"k_max": 6}, target)
    assert found.param == CALIBRATED[selector][0]
    assert profiler.selector_params[found.param] == found.value  # left running at the value found
    # recounted at that value: the same mean k (one token of 96 moves a layer's k_mean by 1/96)
    assert mean_k(model, profiler, calibration) == pytest.approx(found.k_mean, abs=1e-12)
    assert abs(found.k_mean - target) <= 0.05
    again = calibrate(model, profiler, calibration, selector, {"k_max": 6}, target)
    assert again == found  # deterministic
    held_out = mean_k(model, profiler, batches(3, 1))  # other text: near the target, not on it
    assert abs(held_out - target) < 1.0


def test_a_target_out_of_reach_gives_the_nearest_end_and_unknown_selectors_are_refused(tiny):
    model, profiler = tiny
    found = calibrate(model, profiler, batches(2, 0), "cumsum", {"k_max": 4}, 7.0)  # k_max 4: at most 4
    assert found.k_mean == pytest.approx(4.0)
    with pytest.raises(ValueError, match="no parameter to calibrate"):
        calibrate(model, profiler, batches(1, 0), "entropy", {"k_max": 4}, 2.0)


def test_allocate_layer_k_by_hand():
    # 4 layers at k = 4, target 3.25: round(0.75 * 4) = 3 steps, to the least sensitive layers 2, 0, 3
    assert allocate_layer_k([0.2, 0.5, 0.1, 0.3], 4, 3.25) == [3, 4, 3, 3]
    # target 2.5: 6 steps, a round over all four, then 2 more to the least sensitive
    assert allocate_layer_k([0.2, 0.5, 0.1, 0.3], 4, 2.5) == [2, 3, 2, 3]
    assert allocate_layer_k([0.0, 0.0], 2, 0.5) == [1, 1]  # never below 1
    assert allocate_layer_k([0.3, 0.3], 4, 4.0) == [4, 4]


def test_layer_k_calibration_on_a_tiny_model(tiny):
    """The sensitivity of a layer is the KL when it alone runs at k - 1, recounted; the budget goes to the layer
    whose KL is larger; the profiler runs the k per layer found (measured k per layer)."""
    model, profiler = tiny
    calibration = batches(2, 0)
    sensitivity = layer_sensitivity(model, profiler, calibration, 3)
    assert all(v >= 0 for v in sensitivity) and max(sensitivity) > 0
    profiler.set_selector("layer_k", k_max=3, ks=[3, 2])  # recount layer 1's entry
    with torch.no_grad():
        kl, count = 0.0, 0
        for x in calibration:
            profiler.set_selector("layer_k", k_max=3, ks=[3, 3])
            ref = torch.log_softmax(model(input_ids=x).logits.float(), -1)
            profiler.set_selector("layer_k", k_max=3, ks=[3, 2])
            logp = torch.log_softmax(model(input_ids=x).logits.float(), -1)
            kl += float((ref.exp() * (ref - logp)).sum(-1).sum())
            count += x.numel()
    assert sensitivity[1] == pytest.approx(kl / count, rel=1e-5, abs=1e-12)
    found = calibrate_layer_k(model, profiler, calibration, 3, 2.5)
    assert found.k_mean == 2.5 and sorted(profiler.selector_params["ks"]) == [2, 3]
    assert profiler.selector_params["ks"][sensitivity.index(min(sensitivity))] == 2  # the least sensitive gives
    layers = (mean_k(model, profiler, calibration), profiler.layers_df()["k_mean"].tolist())
    assert layers[0] == 2.5 and layers[1] == profiler.selector_params["ks"]
