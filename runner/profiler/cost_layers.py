"""What the MoE layers cost: analytic FLOPs per token from the resolved dimensions (no forward pass needed, so it
works on the meta device), FLOPs measured by FlopCounterMode per layer and phase, and parameter counts."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pandas as pd
from torch import nn

from . import upstream
from .cost_formulas import count_flops
from .cost_model import embedding_params
from .scan import MoELayer, read_live_top_k


class Cost:
    def __init__(self, model: nn.Module, layers: list[MoELayer]):
        self.model, self.layers = model, layers
        self.measured: dict[str, list[int]] = {}  # phase -> measured FLOPs per layer
        self.forward_measured: dict[str, int] = {}  # phase -> measured FLOPs of the whole forward passes
        # phase -> per layer, the analytic FLOPs of the tokens routed while measuring (None: routing not recorded):
        # what `measured` must equal for a layer marked exact
        self.expected: dict[str, list[int] | None] = {}
        self.taken = False  # whether measure_flops() ran since the last reset

    def reset(self) -> None:
        self.measured, self.forward_measured, self.expected, self.taken = {}, {}, {}, False

    def measured_in(self, phase: str) -> list[int] | None:
        return self.measured.get(phase) if self.taken else None

    def expected_in(self, phase: str) -> list[int] | None:
        """Per layer, the analytic FLOPs of the tokens the measured blocks routed (like with like: the runner
        measures the first batch only by default); None where routing was not recorded."""
        return self.expected.get(phase) if self.taken else None

    def mismatch(self, phase: str, layer: MoELayer) -> str | None:
        """Why `layer`, marked exact, is not: its measured FLOPs differ from the analytic count of the same tokens.
        None when it agrees, was not measured, or is not marked exact."""
        measured, expected = self.measured_in(phase), self.expected_in(phase)
        if not layer.handler.exact or measured is None or expected is None or measured[layer.position] == expected[layer.position]:
            return None
        return (f"layer {layer.layer_id}: measured {measured[layer.position]:,} FLOPs but the analytic count of the "
                f"same tokens is {expected[layer.position]:,}: the analytic count is wrong for this model (stored as "
                f"not exact)")

    @contextmanager
    def measure_flops(self, phase: str, routed: Callable[[], list[tuple[int, int]]] | None = None) -> Iterator[Any]:
        """Count the FLOPs of the block per layer into `phase`. routed(): per layer, (tokens, computed expert pairs)
        recorded so far, over every phase; read before and after the block (a device read at each end, outside the
        hot path), it gives the analytic count of the very tokens measured."""
        handles = []
        measured = self.measured.setdefault(phase, [0] * len(self.layers))
        before = routed() if routed is not None else None
        with count_flops() as counter, upstream.force_eager():
            for layer in self.layers:
                for module in layer.measured_modules():
                    handles += _flop_hooks(counter, measured, layer.position, module)
            try:
                yield counter
            finally:
                for handle in handles:
                    handle.remove()
        self.forward_measured[phase] = self.forward_measured.get(phase, 0) + _total(counter)
        self.taken = True
        if before is None or self.expected.get(phase, []) is None:
            self.expected[phase] = None
        else:
            expected = self.expected.setdefault(phase, [0] * len(self.layers))
            for layer, (t0, a0), (t1, a1) in zip(self.layers, before, routed()):
                parts = layer.cost.flops(t1 - t0, a1 - a0)
                expected[layer.position] += parts["flops_router"] + parts["flops_experts"] + parts["flops_shared"]
        for layer in self.layers:
            why = self.mismatch(phase, layer)
            if why is not None:
                warnings.warn(why, stacklevel=3)

    def live_k(self, layer: MoELayer, k: float | None) -> float:
        return float(k if k is not None else (read_live_top_k(layer) or layer.dims["top_k"].value))

    def flops_per_token(self, k: float | None = None) -> pd.DataFrame:
        rows = []
        for layer in self.layers:
            kk = self.live_k(layer, k)
            cost = layer.cost
            rows.append(dict(
                layer=layer.layer_id, k=kk, flops_router=cost.router, flops_experts=kk * cost.per_expert,
                flops_shared=cost.shared, flops=cost.per_token(kk), exact=layer.handler.exact,
            ))
        return pd.DataFrame(rows)

    def param_counts(self, k: float | None = None) -> dict[str, float]:
        total = sum(p.numel() for p in self.model.parameters())
        experts = 0
        active_experts = 0.0
        for layer in self.layers:
            n = sum(p.numel() for p in layer.experts.parameters())
            experts += n
            active_experts += n * self.live_k(layer, k) / layer.num_experts
        active = total - experts + active_experts
        return dict(params_total=total, params_experts=experts, params_active=active,
                    params_active_nonembedding=active - embedding_params(self.model))


def _flop_hooks(counter, measured: list[int], position: int, module: nn.Module) -> list:
    """FLOPs counted between a module's pre- and post-hook go to its layer (nested calls are fine: a stack)."""
    starts: list[int] = []

    def pre(mod, args):
        starts.append(_total(counter))

    def post(mod, args, output):
        measured[position] += _total(counter) - starts.pop()

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


def _total(counter) -> int:
    return int(sum(counter.flop_counts["Global"].values()))
