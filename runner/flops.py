"""FLOPs: the analytic per-layer formula and a measured count with FlopCounterMode.

Convention (FlopCounterMode's): 2 FLOPs per multiply-accumulate of a matmul; nothing else counts.
Per token, one MoE layer:
    router           2 * H * E_router
    routed experts   k_t * 2 * m * H * I      (m = 3 matmuls for gated SwiGLU experts, 2 otherwise)
    shared experts   2 * m_s * H * I_s  (+ 2 * H for a Linear(H, 1) shared-expert gate)
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class LayerCost:
    """Per-token analytic FLOPs of one MoE layer, split into its parts."""

    router: int  # per token
    per_expert: int  # per (token, routed expert) assignment
    shared: int  # per token

    def flops(self, tokens: int, assignments: int) -> dict[str, int]:
        return {
            "flops_router": self.router * tokens,
            "flops_experts": self.per_expert * assignments,
            "flops_shared": self.shared * tokens,
        }

    def per_token(self, k: float) -> float:
        return self.router + k * self.per_expert + self.shared


def layer_cost(
    *, hidden_dim: int, router_width: int, expert_dim: int, gated: bool,
    shared_expert_dim: int = 0, shared_gated: bool = True, shared_gate: bool = False,
) -> LayerCost:
    matmuls = 3 if gated else 2
    shared_matmuls = 3 if shared_gated else 2
    shared = 2 * shared_matmuls * hidden_dim * shared_expert_dim + (2 * hidden_dim if shared_gate else 0)
    return LayerCost(
        router=2 * hidden_dim * router_width,
        per_expert=2 * matmuls * hidden_dim * expert_dim,
        shared=shared,
    )


def _grouped_mm_flops(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor | None = None, *args, out_val=None, **kwargs) -> int:
    """FLOPs of aten._grouped_mm, which FlopCounterMode does not know (torch <= 2.13 reports 0).

    2-D x 3-D with offsets (the MoE case): rows past offs[-1] are not computed, so 2 * offs[-1] * K * N.
    3-D x 3-D: a batched matmul. Otherwise (grouped over K): one full 2 * M * K * N product.
    """
    if a.dim() == 2 and b.dim() == 3:
        rows = int(offs[-1]) if offs is not None and offs.numel() else a.shape[0]
        return 2 * rows * a.shape[1] * b.shape[2]
    if a.dim() == 3 and b.dim() == 3:
        return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    return 2 * a.shape[-2] * a.shape[-1] * b.shape[-1]


_grouped_mm_flops._get_raw = True  # needs the offsets' values, not just shapes


def _custom_mapping() -> dict:
    mapping = {torch.ops.aten._grouped_mm: _grouped_mm_flops}
    fallback = getattr(getattr(torch.ops, "transformers", None), "grouped_mm_fallback", None)
    if fallback is not None:  # transformers' opaque Python-loop op (torch.compile / old CPU torch)
        mapping[fallback] = _grouped_mm_flops
    return mapping


class _GlobalOnly:
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@contextmanager
def count_flops() -> Iterator[FlopCounterMode]:
    """FlopCounterMode that also counts grouped experts (and transformers' grouped_mm fallback op)."""
    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    # Attribution is done by the profiler's own hooks; FlopCounterMode's module tracker is not needed and
    # raises under no_grad when a submodule receives a view of a Parameter (dbrx's expert GLU).
    counter.mod_tracker = _GlobalOnly()
    with counter:
        yield counter
