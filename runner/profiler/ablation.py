"""Expert ablation, an interventional measure (arXiv 2606.10703 finds the observational statistics, load and
co-activation, do not predict which experts matter): for each MoE layer and expert, the loss and the KL to the
model's own routing when that expert is removed from that layer's routing, on a few batches.

Removing expert e: the router proposes k + 1 candidates, and every token keeps its top k other than e (the next best
expert takes e's slot; a token that did not pick e is unchanged). The kept weights are the router's own, renormalised
as a dynamic selector's are (`renormalize`, profiler.md). Each (layer, expert) is one pass over the batches: L x E
passes, plus one with the model's own routing for the reference distributions (kept on the host, B x T x V floats per
batch).
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from .attach import input_device
from .evaluate import target_values

COLUMNS = ["layer", "expert", "loss", "delta_loss", "kl", "top1_agreement", "targets"]


def _without_expert(probs: torch.Tensor, k_max: int, k_min: int = 1, position: int = 0, index=None,
                    layer: int = -1, expert: int = -1) -> torch.Tensor:
    """Keep the first k_max - 1 candidates, or, at MoE layer `layer` for a token whose first k_max - 1 hold `expert`,
    every candidate but that one."""
    columns = torch.arange(k_max, device=probs.device)
    keep = (columns < k_max - 1).expand(probs.shape[0], k_max)
    if position != layer:
        return keep
    hit = index.reshape(-1, k_max).to(probs.device) == expert
    dropped = (hit & keep).any(-1, keepdim=True)
    return torch.where(dropped, ~hit, keep)


@torch.no_grad()
def expert_ablation(model: torch.nn.Module, profiler, batches: Sequence[torch.Tensor]) -> pd.DataFrame:
    """One row per (MoE layer, expert): loss, delta_loss (loss minus the own routing's), mean KL(P_own || P_ablated)
    and top-1 agreement over the batches' next-token targets. Runs the model's own routing at its live top-k; the
    profiler is left running it (selector cleared by the caller's detach or set_selector)."""
    device = input_device(model)
    k = profiler.top_k or profiler.layers[0].dims["top_k"].value
    inputs = [b.to(device) for b in batches]
    with profiler.default_routing():
        reference = [model(input_ids=x, use_cache=False).logits.float().cpu() for x in inputs]
    own = sum(float(target_values(r, x.cpu())["nll"].sum()) for r, x in zip(reference, inputs))
    targets = sum(x[:, 1:].numel() for x in inputs)
    rows = []
    for layer in profiler.layers:
        for expert in range(layer.num_experts):
            profiler.set_selector(_without_expert, k_max=k + 1, layer=layer.position, expert=expert)
            nll = kl = agree = 0.0
            for x, ref in zip(inputs, reference):
                values = target_values(model(input_ids=x, use_cache=False).logits.float().cpu(), x.cpu(), ref)
                nll += float(values["nll"].sum())
                kl += float(values["kl"].sum())
                agree += float(values["agree"].sum())
            rows.append(dict(layer=layer.layer_id, expert=expert, loss=nll / targets, delta_loss=(nll - own) / targets,
                             kl=kl / targets, top1_agreement=agree / targets, targets=targets))
    profiler.set_top_k(k)
    return pd.DataFrame(rows, columns=COLUMNS)
