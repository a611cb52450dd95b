"""One Triton kernel per MoE layer per router call: the recorder's statistics and default analyses, fused.

What `LayerAccumulators.accumulate` and `drops.add_call_drops` compute in torch ops (the reference, kept for the CPU
and for co-activation), this kernel computes in one launch on CUDA: router probabilities (softmax / normalised
sigmoid / as given), their entropy, top-1 and top-1 margin, selected mass, top-k boundary margin, per-expert counts,
gate mass and importance, the k histogram, and capacity drops at every factor, added in place to the current phase of
the layer's accumulators. Definitions: metrics.py.

It is registered as a custom op (`torch.library.triton_op`), so dynamo traces it without a graph break, inductor
launches it as a user-defined Triton kernel inside its CUDA graphs, and eager code calls it directly (one launch, no
staging copy, no reference to the router's outputs kept).

Layout of a launch: up to MAX_PROGRAMS programs stride over the call's tokens in blocks; each reduces its tokens in
registers and adds them to the accumulators with atomic adds (fp64 sums: the order changes, the values agree to
rounding; counts are integers: exact). Capacity drops need the whole call's per-expert counts: each program adds its
counts to a per-row scratch and takes a ticket; the last one reads the scratch (and zeroes it, and the ticket, for the
next call), so the kernel leaves no state behind and replays of a CUDA graph stay exact.

Float tolerances against the reference (tests/e2e/test_fused_stats.py): the per-token values are fp32 as in the
reference (Triton's exp / log differ from torch's by a few ulp), summed in fp64: relative 1e-5 per sum. NaN logits
give NaN in the same sums as the reference; counts, k histogram and drops are equal.
"""
from __future__ import annotations

import functools
import os

import torch

SCORING_CODES = {"softmax": 0, "sigmoid": 1, "probs": 2}
MAX_PROGRAMS = 128  # enough to spread a 4,096-token prefill call over the SMs; atomics per program stay few
TILE_ELEMENTS = 2048  # tokens x padded width per block: registers of 4 warps

try:  # optional: without triton, or without CUDA, the recorder keeps its torch path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = tl = None


# off: recorders allocated from now on keep the torch path on CUDA too (benchmarks compare the two with it)
ENABLED = True


def available() -> bool:
    """Whether recorders use the fused kernel on CUDA (triton importable, a CUDA device present, ENABLED)."""
    return ENABLED and triton is not None and torch.cuda.is_available()


def padded(n: int) -> int:
    """The next power of two at or above n (Triton block sizes)."""
    return 1 << max(0, int(n) - 1).bit_length()


def launch_shape(tokens: int, width: int) -> tuple[int, int]:
    """(programs, block of tokens) for a call of `tokens` tokens over a padded width."""
    block = max(1, min(TILE_ELEMENTS // padded(width), padded(max(tokens, 1))))
    return max(1, min(MAX_PROGRAMS, -(-tokens // block))), block


@functools.lru_cache(maxsize=None)
def kernel(interpret: bool):
    """The Triton kernel, built on first use (TRITON_INTERPRET is read when a kernel is decorated: the CPU tests set
    it before their first call, so an interpreted and a compiled kernel can each be built once)."""
    if triton is None:
        raise RuntimeError("the fused routing kernel needs triton: pip install triton")

    @triton.jit
    def route_stats(logits_ptr, index_ptr, weight_ptr, phase_ptr, factors_ptr,
                    counts_ptr, gate_ptr, importance_ptr, khist_ptr, sums_ptr, drops_ptr, distinct_ptr, scratch_ptr,
                    ticket_ptr,
                    n, w, real, row, slot_base,
                    sl_n, sl_c, si_n, si_c, sw_n, sw_c,
                    SLOTS: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, KP: tl.constexpr, F: tl.constexpr,
                    FP: tl.constexpr, SCORING: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        programs = tl.num_programs(0)
        cols = tl.arange(0, WP)
        cmask = cols < w
        kcols = tl.arange(0, KP)
        counts = tl.zeros([WP], dtype=tl.int64)
        gate = tl.zeros([WP], dtype=tl.float64)
        importance = tl.zeros([WP], dtype=tl.float64)
        khist = tl.zeros([KP], dtype=tl.int64)
        s_entropy = tl.zeros([BLOCK], dtype=tl.float64)
        s_top1 = tl.zeros([BLOCK], dtype=tl.float64)
        s_margin = tl.zeros([BLOCK], dtype=tl.float64)
        s_selected = tl.zeros([BLOCK], dtype=tl.float64)
        s_boundary = tl.zeros([BLOCK], dtype=tl.float64)
        s_defined = tl.zeros([BLOCK], dtype=tl.int64)
        for start in range(pid * BLOCK, n, programs * BLOCK):
            rows = start + tl.arange(0, BLOCK)
            rmask = rows < n
            m2 = rmask[:, None] & cmask[None, :]
            x = tl.load(logits_ptr + rows[:, None] * sl_n + cols[None, :] * sl_c, mask=m2, other=0.0).to(tl.float32)
            if SCORING == 0:  # softmax
                xs = tl.where(cmask[None, :], x, float("-inf"))
                e = tl.exp(xs - tl.max(xs, 1)[:, None])
                p = e / tl.sum(e, 1)[:, None]
            elif SCORING == 1:  # sigmoid scores normalised to sum 1
                s = tl.where(cmask[None, :], tl.sigmoid(x), 0.0)
                p = s / tl.maximum(tl.sum(s, 1), 1e-30)[:, None]
            else:  # the router's own probabilities
                p = tl.where(cmask[None, :], x, 0.0)
            # torch's max / min propagate NaN and the GPU's need not: a row with a NaN gives NaN, as in torch
            row_nan = tl.sum((m2 & (p != p)).to(tl.int32), 1) > 0
            entr = tl.where(p > 0, -p * tl.log(tl.where(p > 0, p, 1.0)),
                            tl.where(p == 0, 0.0, tl.where(p < 0, float("-inf"), p)))
            entropy = tl.sum(tl.where(cmask[None, :], entr, 0.0), 1)
            finite = tl.where(cmask[None, :] & (p == p), p, float("-inf"))
            top1 = tl.max(finite, 1)
            at_top = cmask[None, :] & (finite == top1[:, None])
            others = tl.max(tl.where(at_top, float("-inf"), finite), 1)
            second = tl.where(tl.sum(at_top.to(tl.int32), 1) > 1, top1, others)
            margin = tl.where(w < 2, 0.0, top1 - second)
            nan = tl.full([BLOCK], float("nan"), tl.float32)
            top1 = tl.where(row_nan, nan, top1)
            margin = tl.where(row_nan, nan, margin)
            # the selected set, slot by slot: counts, gate mass, k and the probability of each selected slot
            chosen = tl.zeros([BLOCK, WP], dtype=tl.int32)
            gate_tile = tl.zeros([BLOCK, WP], dtype=tl.float32)
            k = tl.zeros([BLOCK], dtype=tl.int32)
            selected = tl.zeros([BLOCK], dtype=tl.float32)
            for s in tl.static_range(SLOTS):
                idx = tl.load(index_ptr + rows * si_n + s * si_c, mask=rmask, other=-1).to(tl.int32)
                valid = (idx >= 0) & (idx < real) & rmask
                safe = tl.minimum(tl.maximum(idx, 0), w - 1)
                at = safe[:, None] == cols[None, :]
                hit = at & valid[:, None]
                chosen += hit.to(tl.int32)
                weight = tl.load(weight_ptr + rows * sw_n + s * sw_c, mask=rmask, other=0.0).to(tl.float32)
                gate_tile += tl.where(hit, weight[:, None], 0.0)
                k += valid.to(tl.int32)
                # probs.gather(safe) * valid: a NaN gathered from an invalid slot stays NaN, as in torch
                selected += tl.sum(tl.where(at, p, 0.0), 1) * valid.to(tl.float32)
            picked = (chosen > 0) & cmask[None, :]
            size = tl.sum(picked.to(tl.int32), 1)
            defined = (size >= 1) & (size < w) & rmask
            lowest = tl.min(tl.where(picked, p, float("inf")), 1)
            highest = tl.max(tl.where(picked | (cols[None, :] >= w), float("-inf"), p), 1)
            boundary = (lowest - highest) / tl.maximum(lowest, 1.1754943508222875e-38)
            boundary = tl.where(defined, tl.where(row_nan, nan, boundary), 0.0)
            # fp64 sums of the fp32 per-token values, as the reference sums them
            s_entropy += tl.where(rmask, entropy, 0.0).to(tl.float64)
            s_top1 += tl.where(rmask, top1, 0.0).to(tl.float64)
            s_margin += tl.where(rmask, margin, 0.0).to(tl.float64)
            s_selected += tl.where(rmask, selected, 0.0).to(tl.float64)
            s_boundary += boundary.to(tl.float64)
            s_defined += defined.to(tl.int64)
            counts += tl.sum(chosen.to(tl.int64), 0)
            gate += tl.sum(gate_tile.to(tl.float64), 0)
            importance += tl.sum(tl.where(m2, p, 0.0).to(tl.float64), 0)
            khist += tl.sum(((k[:, None] == kcols[None, :]) & rmask[:, None]).to(tl.int64), 0)
        slot = slot_base + tl.load(phase_ptr)
        wmask = cols < W
        tl.atomic_add(counts_ptr + slot * W + cols, counts, mask=wmask)
        tl.atomic_add(gate_ptr + slot * W + cols, gate, mask=wmask)
        tl.atomic_add(importance_ptr + slot * W + cols, importance, mask=wmask)
        tl.atomic_add(khist_ptr + slot * (W + 1) + kcols, khist, mask=kcols < W + 1)
        j = tl.arange(0, 8)
        sums = tl.where(j == 0, tl.sum(s_entropy, 0), tl.where(j == 1, tl.sum(s_top1, 0), tl.where(
            j == 2, tl.sum(s_margin, 0), tl.where(j == 3, tl.sum(s_selected, 0), tl.where(
                j == 4, tl.sum(s_boundary, 0), tl.sum(s_defined, 0).to(tl.float64))))))
        tl.atomic_add(sums_ptr + slot * 6 + j, sums, mask=j < 6)
        if F > 0:  # capacity drops: the whole call's counts, in the last program to finish
            tl.atomic_add(scratch_ptr + row * WP + cols, counts, mask=wmask)
            ticket = tl.atomic_add(ticket_ptr + row, 1)
            if ticket == programs - 1:
                total = tl.atomic_xchg(scratch_ptr + row * WP + cols, tl.zeros([WP], dtype=tl.int64), mask=wmask)
                tl.atomic_xchg(ticket_ptr + row, 0)
                f = tl.arange(0, FP)
                factors = tl.load(factors_ptr + f, mask=f < F, other=0.0)
                # tl.full: an int argument equal to 1 arrives as a Python constant (Triton specialises on it)
                assignments = tl.full([FP], n, tl.int64) * SLOTS
                capacity = tl.math.ceil(factors * (assignments.to(tl.float64) / tl.full([FP], real, tl.float64)))
                over = tl.where(wmask[None, :], total.to(tl.float64)[None, :] - capacity[:, None], 0.0)
                dropped = tl.sum(tl.maximum(over, 0.0), 1).to(tl.int64)
                dropped = tl.where(f == F, assignments, dropped)
                at_drops = drops_ptr + slot * (F + 1) + f
                tl.store(at_drops, tl.load(at_drops, mask=f < F + 1, other=0) + dropped, mask=f < F + 1)
                # the experts this call used, and E (1 - (1 - k/E)^B) at its mean k (drops.py's _distinct)
                j = tl.arange(0, 4)
                loads = tl.where(wmask, total, 0)  # lanes past W hold whatever the masked exchange returned
                used = tl.sum((loads > 0).to(tl.float64), 0)
                experts = tl.full([4], real, tl.float64)
                tokens = tl.full([4], n, tl.float64)
                k_mean = tl.sum(loads.to(tl.float64), 0) / tokens
                uniform = experts * (1.0 - tl.exp(tokens * tl.log(1.0 - k_mean / experts)))
                d = tl.where(j == 0, used, tl.where(j == 1, uniform, 1.0))
                at_distinct = distinct_ptr + slot * 3 + j
                tl.store(at_distinct, tl.load(at_distinct, mask=j < 3, other=0.0) + d, mask=j < 3)

    return route_stats


BUFFERS = ("counts", "gate_mass", "importance", "k_hist", "sums", "drops", "distinct", "call_counts", "tickets")


def launch(runner, logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor,
           factors: torch.Tensor, buffers: list[torch.Tensor], width: int, real: int, row: int, slot_base: int,
           scoring: int, num_factors: int) -> None:
    """Launch `runner` (the kernel, or it wrapped for tracing) on one router call: [n, w] logits, [n, slots] index
    and weight, into the accumulators `buffers` (BUFFERS order) of a group of router width `width`; the layer is row
    `row`, its first slot `slot_base`, `real` its computing experts; `num_factors` capacity factors (0: no drops, and
    `factors` and the drops buffer are not read)."""
    n, w = logits.shape
    programs, block = launch_shape(n, width)
    runner[(programs,)](
        logits, index, weight, phase, factors, *buffers, n, w, real, row, slot_base,
        logits.stride(0), logits.stride(1), index.stride(0), index.stride(1), weight.stride(0), weight.stride(1),
        SLOTS=index.shape[1], W=width, WP=padded(width), KP=padded(width + 1), F=num_factors,
        FP=padded(num_factors + 1), SCORING=scoring, BLOCK=block)


def _define_op():
    """The custom op `moe_profiler::route_stats`, defined at import (dynamo traces a call of it, never its
    definition): what compiled code calls."""
    from torch.library import triton_op, wrap_triton

    @triton_op("moe_profiler::route_stats", mutates_args=BUFFERS)
    def route_stats(logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor,
                    factors: torch.Tensor, counts: torch.Tensor, gate_mass: torch.Tensor, importance: torch.Tensor,
                    k_hist: torch.Tensor, sums: torch.Tensor, drops: torch.Tensor, distinct: torch.Tensor,
                    call_counts: torch.Tensor, tickets: torch.Tensor, width: int, real: int, row: int, slot_base: int,
                    scoring: int,
                    num_factors: int) -> None:
        launch(wrap_triton(kernel(False)), logits, index, weight, phase, factors,
               [counts, gate_mass, importance, k_hist, sums, drops, distinct, call_counts, tickets], width, real, row,
               slot_base, scoring, num_factors)

    return route_stats


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


OP = _define_op() if triton is not None else None
