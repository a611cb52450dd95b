"""Vocabulary specialization (opt-in: `analyses=("vocab",)`), recorded on the device: per MoE layer and phase an exact
count table [V, W] of (token id, top-1 routed expert). The definition is metrics.vocab_specialization; the bytes and
the caveats are in docs/metrics.md.

The routers do not see token ids. A forward pre-hook on the top model (attach.py) copies the forward's input ids into
a static buffer on each recording device (`capture`: a copy, never a reference) and their number into a device
scalar. Each router call of that forward (its tokens: the flattened [batch, seq] positions, in the same order) pairs its
top-1 expert with them (`add_call`); a call with another number of tokens adds nothing (a forward given inputs_embeds
captures nothing; packed or partial calls), and the top model's forward post-hook sets the number to -1, so router
calls outside a forward of the top model pair nothing. `vocab_tokens` (the tokens counted) shows what was paired.

Eager, traced (torch.compile) and captured (CUDA graphs) calls run the same ops: registered buffers marked static (by
LayerAccumulators), in-place updates, the phase read from its device scalar, no Python state written per call, no host
sync. The table takes an `index_add_` even when traced: a one-hot over V x W cannot be materialised, and for int32
inductor emits atomic adds (its sort-based fallback is for int64). int32 counts are exact below 2^31 per entry: a
(layer, phase) that counts fewer than 2^31 tokens cannot overflow.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch

from .upstream import mark_static

if TYPE_CHECKING:
    from .accumulators import LayerAccumulators

ID_SLOTS = 8192  # ids a forward may hold before an eager forward grows the buffer (traced or captured ones cannot)


def register(group: "LayerAccumulators", vocab_size: int, device: torch.device) -> int:
    """Register the buffers of `group` (its rows, phases and width set; called where its other buffers are made):
    `vocab`, the [L * P * V * W] int32 table; `token_ids`, the captured ids; `token_count`, how many (-1: none). All
    empty where vocab_size is 0 (the analysis off). Returns vocab_size."""
    on = vocab_size > 0
    size = len(group.positions) * group.phases * vocab_size * group.width
    group.register_buffer("vocab", torch.zeros(size, dtype=torch.int32, device=device))
    group.register_buffer("token_ids", torch.zeros(ID_SLOTS if on else 0, dtype=torch.int64, device=device))
    group.register_buffer("token_count", torch.full((1 if on else 0,), -1, dtype=torch.int64, device=device))
    return vocab_size


def capture(groups: Iterable["LayerAccumulators"], ids: torch.Tensor | None) -> None:
    """Copy one forward's input ids into every recording group (None: none to pair, e.g. an inputs_embeds forward or
    the forward's end). An eager forward larger than the buffer grows it; a traced or captured one pairs nothing."""
    for group in groups:
        if not group.vocab_size:
            continue
        n = -1 if ids is None else ids.numel()
        if n > group.token_ids.shape[0]:
            if torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
                n = -1
            else:
                with torch.inference_mode(False):  # a normal tensor, updatable in and out of inference mode
                    group.token_ids = torch.zeros(n, dtype=torch.int64, device=group.token_ids.device)
                mark_static(group.token_ids)
        if n > 0:
            group.token_ids[:n].copy_(ids.reshape(-1))
        group.token_count.fill_(n)


def shapes(group: "LayerAccumulators") -> dict[str, tuple[int, ...]]:
    """The table's entries per (layer, phase), for LayerAccumulators.shapes (none where the analysis is off)."""
    return {"vocab": (group.vocab_size, group.width)} if group.vocab_size else {}


@torch.no_grad()
def add_call(group: "LayerAccumulators", row: int, logits: torch.Tensor, index: torch.Tensor) -> None:
    """Count one router call of row `row` ([1, n, w] logits, [1, n, slots] indices) into the current phase: each token's
    top-1 routed expert (of its selected real experts, the one of highest score; p is monotone in the score) against
    its captured id, where the captured ids are n (this forward's) and the id is below V. Nothing where the analysis is
    off."""
    V, W = group.vocab_size, group.width
    logits, index = logits[0], index[0]
    n = index.shape[0]
    if not V or n > group.token_ids.shape[0]:  # off; more tokens than any capture held: not this forward's ids
        return
    valid = (index >= 0) & (index < group.real[row, 0])
    safe = index.clamp(0, logits.shape[-1] - 1).long()
    score = logits.float().gather(-1, safe).masked_fill(~valid, float("-inf"))
    top1 = safe.gather(-1, score.argmax(-1, keepdim=True)).squeeze(-1)  # a tie: the earlier slot
    ids = group.token_ids[:n]
    counted = valid.any(-1) & (ids >= 0) & (ids < V) & (group.token_count == n)
    cell = ((group.row_slots[row] + group.phase) * V + ids.clamp(0, V - 1)) * W + top1
    group.vocab.index_add_(0, cell, counted.int())
