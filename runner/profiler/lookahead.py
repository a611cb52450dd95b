"""Layer-ahead predictability (opt-in: `analyses=("lookahead",)`), recorded on the device: at MoE layer l, the hook
sends the router input through layer l+1's router (attach.py) and keeps the experts it picks (`keep`); layer l+1's
call on the same tokens scores them (`score`): per (layer l, phase) the sum over tokens of |predicted ∩ selected| /
|selected| and the tokens, read as `lookahead_recall` (metrics.py; docs/metrics.md#layer-ahead-predictability).

The prediction is kept like the transitions' selection (LayerAccumulators.keep_selection: a [largest call, W] uint8
copy per layer that only eager calls grow) and paired only with a call of as many tokens. Same ops eager, traced and
captured: registered static buffers, in-place updates, no Python state written per call, no host sync.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .accumulators import LayerAccumulators, RoutingRecorder


def register(group: "LayerAccumulators", width: int, device: torch.device) -> int:
    """Register `lookahead` ([L * P * 2] float64 sums), `prediction` ([L, 0, width] uint8, grown by eager calls) and
    `prediction_tokens` ([L], -1: none) on `group`; all empty where width is 0 (the analysis off). Returns width."""
    rows = len(group.positions) if width else 0
    group.register_buffer("lookahead", torch.zeros(rows * group.phases * 2, dtype=torch.float64, device=device))
    group.register_buffer("prediction", torch.zeros(rows, 0, width, dtype=torch.uint8, device=device))
    group.register_buffer("prediction_tokens", torch.full((rows,), -1, dtype=torch.int64, device=device))
    return width


def shapes(group: "LayerAccumulators") -> dict[str, tuple[int, ...]]:
    return {"lookahead": (2,)} if group.lookahead_width else {}


def reset(group: "LayerAccumulators") -> None:
    group.prediction_tokens.fill_(-1)


def keep(recorder: "RoutingRecorder", layer: int, index: torch.Tensor) -> None:
    """Keep the experts ([n, slots] index) that MoE layer `layer`'s router input, sent through the next MoE layer's
    router, selects, for that layer's call on the same tokens."""
    group, row = recorder._where[layer]
    index = index.reshape(-1, index.shape[-1]).to(group.prediction.device)
    mask = group.selection_mask(index, group.lookahead_width, recorder.num_experts[layer + 1],
                                dense=torch.compiler.is_compiling())
    group.keep_selection(row, mask, "prediction")


def score(group: "LayerAccumulators", row: int, following: "LayerAccumulators", index: torch.Tensor,
          num_experts: int) -> None:
    """Score row `row`'s kept prediction against the next layer's call (`following`'s [n, slots] index): the per-token
    recall summed and the tokens that selected any expert, added where the prediction had as many tokens (device to
    device on a split model, no host sync)."""
    dense = torch.compiler.is_compiling()
    selected = following.selection_mask(index, group.lookahead_width, num_experts, dense)
    n = selected.shape[0]
    if n > group.prediction.shape[1]:
        return
    predicted, selected = group.prediction[row, :n].float(), selected.to(group.prediction.device).float()
    size = selected.sum(-1)
    recall = torch.where(size > 0, (predicted * selected).sum(-1) / size.clamp_min(1), 0.0)
    same = group.prediction_tokens[row] == n
    sums = torch.stack([recall.sum(dtype=torch.float64), (size > 0).sum().double()]) * same
    group._add("lookahead", slice(row, row + 1), sums.unsqueeze(0), dense)
