"""One forward of a model counted both ways: the profiler's analytic FLOPs and FlopCounterMode's, per MoE layer and for
the whole forward. Used by the whole-model tests and the upstream canary (tests/upstream_canary.py)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import pandas as pd
import torch

from runner import MOEProfiler
from runner.profiler.cost_model import ForwardCost


@dataclass
class Counted:
    layers: pd.DataFrame  # layers_df(): analytic `flops` and measured `flops_measured` per MoE layer
    cost: ForwardCost
    analytic: float | None  # whole forward per token, the MoE layers at their routed count (None: no routed count)
    measured: float  # whole forward per token, FlopCounterMode


def count_forward(model, attention: str, batch: int = 2, seq: int = 12, seed: int = 0) -> Counted | None:
    """Count one forward of `batch` x `seq` random tokens under `attention`; None where the model refuses it."""
    try:
        model.set_attn_implementation(attention)
    except ValueError:  # transformers: this architecture has no such attention path
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profiler = MOEProfiler(model, verbose=False)
        x = torch.randint(2, 100, (batch, seq), generator=torch.Generator().manual_seed(seed))
        try:
            with torch.no_grad(), profiler.measure_flops():
                model(input_ids=x)
            layers = profiler.layers_df()
            cost = profiler.forward_cost()
            routed = float(layers["flops"].sum()) / (batch * seq) if "flops" in layers else None
            analytic = cost.per_token(batch, seq, moe_per_token=routed) if routed is not None else None
            return Counted(layers, cost, analytic, profiler.model_flops_measured()["prefill"] / (batch * seq))
        finally:
            profiler.detach()
