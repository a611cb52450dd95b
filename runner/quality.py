"""Next-token quality of one batch: NLL over all non-pad targets, and agreement with a reference pass.

Blocks are packed without padding, so the targets are input_ids[:, 1:] at every position of logits[:, :-1].
KL(P_ref || P_job) and top-1 agreement compare the next-token distributions at the same positions.
All sums are returned as Python numbers so the caller can aggregate over batches exactly (token-weighted means).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def batch_sums(logits: torch.Tensor, input_ids: torch.Tensor, ref_logits: torch.Tensor | None = None,
               pad_id: int | None = None) -> dict[str, float]:
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:].to(logp.device)
    mask = torch.ones_like(targets, dtype=torch.bool) if pad_id is None else targets != pad_id
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out = dict(targets=int(mask.sum()), nll=float(nll[mask].sum()))
    if ref_logits is not None:
        ref = F.log_softmax(ref_logits[:, :-1].float().to(logp.device), dim=-1)
        ref_nll = -ref.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        kl = (ref.exp() * (ref - logp)).sum(-1).clamp_min(0)  # KL >= 0: float rounding alone gives -1e-10 and so on
        agree = ref.argmax(-1) == logp.argmax(-1)
        out.update(ref_nll=float(ref_nll[mask].sum()), kl=float(kl[mask].sum()), agree=int(agree[mask].sum()))
    return out
