"""A forward-only grouped experts implementation for per-token dynamic k, registered through transformers'
own `ExpertsInterface` (no module is replaced).

transformers' `grouped_mm` handles the sentinel index (num_experts) correctly only with
`_is_expert_parallel=True`, which adds masks written for training: an in-place mask of the gathered inputs
(for backward) and a mask after each projection. For inference one mask after the down projection suffices:
sentinel rows sort to the tail, the grouped matmuls never compute them (rows past the last offset), and their
uninitialised values are only read by the next grouped matmul, which skips them too. Everything else is
transformers' computation, step for step, so outputs equal the stock path (a test compares the two).
"""
from __future__ import annotations

import torch

NAME = "moe_profiler_grouped_mm"

from .upstream import experts_functions, grouped_linear


def grouped_mm_skip_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                            top_k_weights: torch.Tensor) -> torch.Tensor:
    device = hidden_states.device
    num_tokens, num_top_k = top_k_index.shape[0], top_k_index.shape[-1]
    hidden_dim = hidden_states.shape[-1]
    num_experts = self.num_experts

    expert_ids_g, perm = torch.sort(top_k_index.reshape(-1))  # sentinels (== num_experts) sort to the tail
    selected_hidden_states_g = hidden_states[perm // num_top_k]
    sample_weights_g = top_k_weights.reshape(-1)[perm]
    histc_input = expert_ids_g.float() if device.type in ("cpu", "mps") else expert_ids_g.int()
    tokens_per_expert = torch.histc(histc_input, bins=num_experts, min=0, max=num_experts - 1)
    offsets = torch.cumsum(tokens_per_expert, dim=0, dtype=torch.int32)
    kept = (expert_ids_g < num_experts).unsqueeze(-1)
    expert_ids_g = expert_ids_g.clamp(max=num_experts - 1)  # bias gathers stay in bounds; those rows are skipped

    has_gate, has_bias = getattr(self, "has_gate", True), getattr(self, "has_bias", False)
    transposed = getattr(self, "is_transposed", False)
    up = self.gate_up_proj if has_gate else self.up_proj
    up_bias = (self.gate_up_proj_bias if has_gate else self.up_proj_bias)[expert_ids_g] if has_bias else None
    proj_out = grouped_linear(selected_hidden_states_g, up, offsets, bias=up_bias, is_transposed=transposed)
    proj_out = self._apply_gate(proj_out) if has_gate else self.act_fn(proj_out)
    down_bias = self.down_proj_bias[expert_ids_g] if has_bias else None
    proj_out = grouped_linear(proj_out, self.down_proj, offsets, bias=down_bias, is_transposed=transposed)
    if getattr(self, "has_post_expert_norm", False):
        proj_out = self.post_expert_norm(proj_out)

    # the one mask: sentinel-tail rows were never computed (uninitialised, possibly NaN; NaN * 0 is NaN)
    weighted_out = torch.where(kept, proj_out * sample_weights_g.unsqueeze(-1), 0)
    inv_perm = torch.empty_like(perm)
    inv_perm[perm] = torch.arange(perm.size(0), device=device)
    final_hidden_states = weighted_out[inv_perm].view(num_tokens, num_top_k, hidden_dim).sum(dim=1)
    return final_hidden_states.to(hidden_states.dtype)


def register() -> bool:
    """Register the implementation with transformers; False where this transformers has no ExpertsInterface."""
    registry = experts_functions()
    if registry is None:  # pragma: no cover
        return False
    registry.setdefault(NAME, grouped_mm_skip_forward)
    return True
