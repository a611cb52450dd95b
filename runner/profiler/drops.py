"""Capacity-factor drops (metrics.capacity_drops) added to a LayerAccumulators group (accumulators.py).

Eager: from the calls the recorder staged, every call of every layer of a group in a handful of kernels at flush
time, instead of ~20 small kernels per layer per call (which cost +3 % prefill and +10 % decode time on an H100).
The capacity is per call, so the recorder keeps each staged call's size. Traced or captured: per call (dense)."""
from __future__ import annotations

import itertools

import torch

from .metrics import capacity_drops, expected_distinct


def _distinct(counts: torch.Tensor, tokens: int, experts) -> torch.Tensor:
    """[..., 3]: per call the distinct experts it used, the uniform reference E(1 - (1 - k/E)^B) at the call's mean
    k = assignments / B, and 1 (the call); summed over the calls axis (-2) by the caller."""
    used = (counts > 0).sum(-1, dtype=torch.float64)
    k = counts.sum(-1, dtype=torch.float64) / tokens
    uniform = expected_distinct(experts, k, tokens)
    return torch.stack([used, uniform, torch.ones_like(used)], -1)


@torch.no_grad()
def add_staged_drops(group, index: torch.Tensor, calls: list[list[int]]) -> None:
    """Add the drops of the calls staged in `index` ([rows, capacity, slots]; row r holds calls[r], in order) to the
    group's current phase. Rows with the same calls are reduced together."""
    if len({tuple(c) for c in calls}) == 1:
        _add(group, slice(None), index, calls[0])
        return
    for row, sizes in enumerate(calls):
        if sizes:
            _add(group, slice(row, row + 1), index[row: row + 1], sizes)


def _add(group, rows: slice, index: torch.Tensor, sizes: list[int]) -> None:
    """Runs of consecutive calls of one size (a prefill's batches, a decode's steps) are reduced together: their
    tokens reshape to [calls, T], so nothing about the sizes has to reach the device (no host-device sync)."""
    dropped, distinct, start, W = 0, 0, 0, group.width
    experts = group.real[rows].view(-1, 1, 1).double()  # [L', 1, 1]: each row's E, against counts [L', calls, W]
    for tokens, run in itertools.groupby(sizes):
        calls = len(list(run))
        part = index[:, start: start + calls * tokens]  # [L', calls * T, slots]
        start += calls * tokens
        slots = part.shape[-1]
        valid = (part >= 0) & (part < group.real[rows])
        at = (torch.arange(calls, device=part.device) * W).repeat_interleave(tokens * slots).view(1, -1) \
            + part.clamp(0, W - 1).long().flatten(1)  # [L', calls * T * slots]: (call, expert) cells
        counts = torch.zeros(part.shape[0], calls * W, dtype=torch.int64, device=part.device)
        counts.scatter_add_(1, at, valid.flatten(1).long())
        per_call = capacity_drops(counts.view(-1, calls, W), group.factors, tokens, slots, experts)  # [L', calls, F]
        dropped = dropped + per_call.sum(1)  # [L', F]
        distinct = distinct + _distinct(counts.view(-1, calls, W), tokens, experts.view(-1, 1)).sum(1)  # [L', 3]
    total = torch.full_like(dropped[:, :1], start * index.shape[-1])
    group._add("drops", rows, torch.cat([dropped, total], -1), dense=False)
    group._add("distinct", rows, distinct, dense=False)


@torch.no_grad()
def add_call_drops(group, rows: slice, index: torch.Tensor, num_experts: int, dense: bool) -> None:
    """One router call's drops at every factor, and its T * k, for row `rows`, at once: the traced or captured path
    (dense: one-hot counts inductor fuses) and a call too large to stage."""
    W, (_, tokens, slots) = group.width, index.shape
    valid = (index >= 0) & (index < group.real[rows])
    safe = index.clamp(0, W - 1).long()
    if dense:
        counts = ((safe.unsqueeze(-1) == group.columns[:W]) & valid.unsqueeze(-1)).sum((1, 2))  # [1, W]
    else:
        counts = torch.zeros(W, dtype=torch.int64, device=index.device).index_add_(
            0, safe.flatten(), valid.flatten().long()).unsqueeze(0)
    dropped = capacity_drops(counts, group.factors, tokens, slots, num_experts)  # [1, F]
    group._add("drops", rows, torch.cat([dropped, torch.full_like(dropped[:, :1], tokens * slots)], -1), dense)
    group._add("distinct", rows, _distinct(counts, tokens, float(num_experts)), dense)
