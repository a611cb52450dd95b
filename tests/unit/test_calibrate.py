"""Compute-matched selectors: a selector's parameter bisected until the mean k of calibration batches reaches a
target, on a tiny real model; checked against the mean k recounted from a plain profiled run at the value found."""
import warnings

import pytest
import torch

from helpers.tiny_configs import build_tiny_model
from runner import MOEProfiler
from runner.profiler.calibrate import CALIBRATED, calibrate, mean_k


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
