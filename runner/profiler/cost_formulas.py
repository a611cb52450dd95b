"""FLOPs: the analytic per-layer formula and a measured count with FlopCounterMode (plus formulas for ops it lacks
or miscounts: aten._grouped_mm, GQA attention kernels).

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

from .upstream import raw_formula, without_module_tracker


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


raw_formula(_grouped_mm_flops)  # needs the offsets' values, not just shapes


# -- attention ------------------------------------------------------------------------------------------------
# transformers calls SDPA with enable_gqa=True on CUDA, so the fused kernels see fewer K/V heads than query heads.
# torch <= 2.12's formulas assert equal head counts (the forward crashes under the counter), and every release reads
# the [B, S, H, D] inputs of _flash/_efficient_attention_forward as [B, H, S, D]. These formulas broadcast K/V heads
# to the query heads, as the kernels do: QK^T and PV over the full score matrix (no causal halving), 2 FLOPs per MAC.


def attention_flops(batch: int, heads_q: int, seq_q: int, seq_k: int, dim_qk: int, dim_v: int) -> int:
    """Forward FLOPs of softmax(Q K^T) V with Hq query heads (K/V heads broadcast to them)."""
    return 2 * batch * heads_q * seq_q * seq_k * (dim_qk + dim_v)


def attention_backward_flops(batch: int, heads_q: int, seq_q: int, seq_k: int, dim_qk: int, dim_v: int) -> int:
    """Backward FLOPs: the scores recomputed (QK^T), then dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q."""
    return 2 * batch * heads_q * seq_q * seq_k * (dim_qk + dim_v + dim_v + dim_qk + dim_qk)


def _check_heads(heads_q: int, heads_kv: int, op: str) -> None:
    if heads_kv <= 0 or heads_q % heads_kv:
        raise ValueError(f"{op}: {heads_q} query heads are not a multiple of {heads_kv} key/value heads")


def _bhsd(query, key, value) -> tuple[int, int, int, int, int, int]:
    """(B, Hq, Sq, Sk, D, Dv) from [B, H, S, D] query/key/value shapes."""
    (b, hq, sq, d), (_, hk, sk, _), dv = query, key, value[-1]
    _check_heads(hq, hk, "sdpa")
    return b, hq, sq, sk, d, dv


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """aten._scaled_dot_product_{flash,efficient,cudnn}_attention (and flash_for_cpu): [B, H, S, D] inputs."""
    return attention_flops(*_bhsd(query, key, value))


def _sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return attention_backward_flops(*_bhsd(query, key, value))


def _varlen_lengths(cu_seqlens: torch.Tensor, max_len: int) -> list[int]:
    if cu_seqlens.device.type == "meta" or type(cu_seqlens).__name__ in ("FakeTensor", "FunctionalTensor"):
        return [max_len] * (cu_seqlens.shape[0] - 1)  # values unknown: the upper bound
    return [int(n) for n in cu_seqlens.diff().tolist()]  # host read: only nested/varlen calls pass offsets


def _bshd_pairs(query, key, value, cu_q, cu_k, max_q, max_k, op: str):
    """(B=1, Hq, Sq, Sk, D, Dv) per sequence from [B, S, H, D] (or varlen [1 or none, total, H, D]) inputs."""
    q, k, v = query.shape, key.shape, value.shape
    hq, d, hk, dv = q[-2], q[-1], k[-2], v[-1]
    _check_heads(hq, hk, op)
    if cu_q is None:  # dense: [B, S, H, D]
        return [(q[0], hq, q[-3], k[-3], d, dv)]
    seqs_q = _varlen_lengths(cu_q, int(max_q))
    seqs_k = _varlen_lengths(cu_k, int(max_k))
    return [(1, hq, sq, sk, d, dv) for sq, sk in zip(seqs_q, seqs_k)]


def _flash_forward_flops(query, key, value, cum_seq_q=None, cum_seq_k=None, max_q=0, max_k=0, *args,
                         out_val=None, **kwargs) -> int:
    pairs = _bshd_pairs(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, "_flash_attention_forward")
    return sum(attention_flops(*p) for p in pairs)


def _efficient_forward_flops(query, key, value, bias=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0,
                             max_seqlen_k=0, *args, out_val=None, **kwargs) -> int:
    pairs = _bshd_pairs(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        "_efficient_attention_forward")
    return sum(attention_flops(*p) for p in pairs)


def _flash_backward_flops(grad_out, query, key, value, out, logsumexp, cum_seq_q=None, cum_seq_k=None, max_q=0,
                          max_k=0, *args, out_val=None, **kwargs) -> int:
    pairs = _bshd_pairs(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, "_flash_attention_backward")
    return sum(attention_backward_flops(*p) for p in pairs)


def _efficient_backward_flops(grad_out, query, key, value, bias, out, cu_seqlens_q=None, cu_seqlens_k=None,
                              max_seqlen_q=0, max_seqlen_k=0, *args, out_val=None, **kwargs) -> int:
    pairs = _bshd_pairs(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        "_efficient_attention_backward")
    return sum(attention_backward_flops(*p) for p in pairs)


for _raw in (_flash_forward_flops, _efficient_forward_flops, _flash_backward_flops, _efficient_backward_flops):
    raw_formula(_raw)  # tensors, not shapes: varlen offsets are read

_ATTENTION = {
    "_scaled_dot_product_flash_attention": _sdpa_flops,
    "_scaled_dot_product_efficient_attention": _sdpa_flops,
    "_scaled_dot_product_cudnn_attention": _sdpa_flops,
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa_flops,  # torch has no formula: counted 0 without this
    "_flash_attention_forward": _flash_forward_flops,
    "_efficient_attention_forward": _efficient_forward_flops,
    "_scaled_dot_product_flash_attention_backward": _sdpa_backward_flops,
    "_scaled_dot_product_efficient_attention_backward": _sdpa_backward_flops,
    "_scaled_dot_product_cudnn_attention_backward": _sdpa_backward_flops,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward_flops,
    "_flash_attention_backward": _flash_backward_flops,
    "_efficient_attention_backward": _efficient_backward_flops,
}


def _custom_mapping() -> dict:
    mapping = {torch.ops.aten._grouped_mm: _grouped_mm_flops}
    for name, formula in _ATTENTION.items():
        if hasattr(torch.ops.aten, name):  # only ops this torch build has
            mapping[getattr(torch.ops.aten, name)] = formula
    fallback = getattr(getattr(torch.ops, "transformers", None), "grouped_mm_fallback", None)
    if fallback is not None:  # transformers' opaque Python-loop op (torch.compile / old CPU torch)
        mapping[fallback] = _grouped_mm_flops
    return mapping


@contextmanager
def count_flops() -> Iterator[FlopCounterMode]:
    """FlopCounterMode that also counts grouped experts (and transformers' grouped_mm fallback op)."""
    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    without_module_tracker(counter)  # attribution is the profiler's own hooks
    with counter:
        yield counter
