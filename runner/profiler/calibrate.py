"""Compute-matched selectors: find the parameter value at which a dynamic-k selector's mean k reaches a target, on a
calibration slice, so that selectors compare at the same compute (the protocol of top-p routing, DTop-p and Ada-K:
the same mean k, or FLOPs, for every method).

The mean k is the run's definition: the mean over the MoE layers of each layer's mean k_t over the prefill tokens.
Each selector's k is monotone in its parameter (cumsum: more mass needs more experts; min_p: a higher floor keeps
fewer; gap_ratio: a larger gap is found later), so a bisection on the parameter is deterministic: the same model,
batches and target give the same value. Each step runs the calibration batches once; the value whose mean k is
closest to the target is returned (k is a step function of the parameter, so the target itself may not be reachable).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .attach import input_device
from .phases import PREFILL
from .selector_registry import CALIBRATED
STEPS = 24  # bisection steps: the interval shrinks 2^24-fold (threshold steps of 6e-8)


@dataclass(frozen=True)
class Calibration:
    """The calibrated parameter and value, the mean k it gave on the calibration batches, and the steps run."""
    param: str
    value: float
    k_mean: float
    steps: int


def mean_k(model: torch.nn.Module, profiler, batches: Sequence[torch.Tensor]) -> float:
    """Mean over the MoE layers of the prefill k_mean of `batches` under the profiler's current routing."""
    profiler.reset()
    device = input_device(model)
    with torch.no_grad(), profiler.phase(PREFILL):
        for batch in batches:
            model(input_ids=batch.to(device), use_cache=False)
    layers = profiler.layers_df()
    return float(layers.loc[layers["phase"] == PREFILL, "k_mean"].mean())


def calibrate(model: torch.nn.Module, profiler, batches: Sequence[torch.Tensor], selector: str, params: dict,
              target_k: float, steps: int = STEPS) -> Calibration:
    """Bisect `selector`'s parameter (CALIBRATED) until the mean k over `batches` is as close to `target_k` as the
    parameter allows; the profiler is left running the selector at the returned value, its counts reset."""
    if selector not in CALIBRATED:
        raise ValueError(f"selector {selector!r} has no parameter to calibrate to a target mean k; those that have: "
                         f"{', '.join(sorted(CALIBRATED))}")
    name, low, high, log = CALIBRATED[selector]
    tried: dict[float, float] = {}

    def k_at(value: float) -> float:
        if value not in tried:
            profiler.set_selector(selector, **{**params, name: value})
            tried[value] = mean_k(model, profiler, batches)
        return tried[value]

    increasing = k_at(high) >= k_at(low)
    for _ in range(steps):
        middle = math.sqrt(low * high) if log else (low + high) / 2
        if (k_at(middle) < target_k) == increasing:
            low = middle
        else:
            high = middle
    best = min(tried, key=lambda v: (abs(tried[v] - target_k), v))  # ties: the smaller value, deterministic
    profiler.set_selector(selector, **{**params, name: best})
    profiler.reset()
    return Calibration(param=name, value=best, k_mean=tried[best], steps=len(tried))


@torch.no_grad()
def layer_sensitivity(model: torch.nn.Module, profiler, batches: Sequence[torch.Tensor], k: int) -> list[float]:
    """Per MoE layer: the mean KL(P_k || P) of the next-token distributions when that layer alone runs at k - 1 and
    every other at k (LExI's and Alloc-MoE's sensitivity, measured on the output)."""
    device, layers = input_device(model), len(profiler.layers)
    kl, tokens = [0.0] * layers, 0
    for batch in batches:
        x = batch.to(device)
        profiler.set_selector("layer_k", k_max=k, ks=[k] * layers)
        reference = F.log_softmax(model(input_ids=x, use_cache=False).logits.float(), -1)
        tokens += reference.shape[0] * reference.shape[1]
        for position in range(layers):
            ks = [k - 1 if i == position else k for i in range(layers)]
            profiler.set_selector("layer_k", k_max=k, ks=ks)
            logp = F.log_softmax(model(input_ids=x, use_cache=False).logits.float(), -1)
            kl[position] += float((reference.exp() * (reference - logp)).sum(-1).clamp_min(0).sum())
    profiler.reset()
    return [value / max(tokens, 1) for value in kl]


def allocate_layer_k(sensitivity: Sequence[float], k: int, target_k: float) -> list[int]:
    """A k per layer whose mean is as close to target_k as whole steps allow (round((k - target_k) * L) steps of -1),
    taken from the least sensitive layers first (ties: the earlier layer), one step per layer per round, never
    below 1."""
    layers = len(sensitivity)
    ks = [k] * layers
    steps = max(0, round((k - target_k) * layers))
    order = sorted(range(layers), key=lambda i: (sensitivity[i], i))
    while steps and any(v > 1 for v in ks):
        for i in order:
            if steps and ks[i] > 1:
                ks[i] -= 1
                steps -= 1
    return ks


def calibrate_layer_k(model: torch.nn.Module, profiler, batches: Sequence[torch.Tensor], k: int,
                      target_k: float) -> Calibration:
    """Per-layer static k at a mean of target_k: the budget split by each layer's sensitivity at k - 1 on `batches`;
    the profiler is left running it."""
    sensitivity = layer_sensitivity(model, profiler, batches, k) if k > 1 else [0.0] * len(profiler.layers)
    ks = allocate_layer_k(sensitivity, k, target_k)
    profiler.set_selector("layer_k", k_max=k, ks=ks)
    profiler.reset()
    return Calibration(param="ks", value=sum(ks) / len(ks), k_mean=sum(ks) / len(ks), steps=len(ks) + 1)
