"""The routing trace: every token's selected experts and combine weights at every MoE layer, kept on the device
until the caller drains it (once per batch), for offline studies (SGLang's per_token mode, Megatron's routing trace,
vLLM's routed_experts).

Same design as the recorder (accumulators.py): preallocated buffers on each layer's device, written in place at a device
cursor (`index_copy_` at fill + arange(n)), the phase a device scalar. No Python state changes per call, so
torch.compile traces it and CUDA graphs replay it. Tokens past `capacity` between two drains land on one spare row
and are counted, never written over earlier ones: drain() reports them as `overflow`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from handlers.base import Scoring

from .metrics import router_probs
from .upstream import mark_static


class RoutingTrace(nn.Module):
    """Per MoE layer: [capacity + 1, slots] int16 experts (-1 where a slot computes nothing), float16 weights, int8
    phase and, with `probs`, [capacity + 1, width] float16 router distributions. Bytes per token and layer:
    slots * 4 + 1 (+ 2 * width with probs)."""

    def __init__(self, num_experts: list[int], widths: list[int], slots: int, capacity: int,
                 devices: list[torch.device], scoring: Scoring, phases: list[str], probs: bool = False):
        super().__init__()
        self.num_experts, self.slots, self.capacity, self.scoring = list(num_experts), slots, capacity, scoring
        self.phases, self.probs = list(phases), probs
        with torch.inference_mode(False):
            for p, (device, width) in enumerate(zip(devices, widths)):
                rows = capacity + 1  # the last row takes what does not fit
                self.register_buffer(f"experts{p}", torch.full((rows, slots), -1, dtype=torch.int16, device=device))
                self.register_buffer(f"weights{p}", torch.zeros(rows, slots, dtype=torch.float16, device=device))
                self.register_buffer(f"phase{p}", torch.zeros(rows, dtype=torch.int8, device=device))
                self.register_buffer(f"probs{p}", torch.zeros(rows if probs else 0, width, dtype=torch.float16,
                                                              device=device))
                self.register_buffer(f"fill{p}", torch.zeros((), dtype=torch.int64, device=device))
                self.register_buffer(f"current{p}", torch.zeros((), dtype=torch.int8, device=device))
        for buffer in self.buffers():
            mark_static(buffer)

    def set_phase(self, name: str) -> None:
        if name not in self.phases:
            self.phases.append(name)
        for p in range(len(self.num_experts)):
            getattr(self, f"current{p}").fill_(self.phases.index(name))

    @torch.no_grad()
    def add(self, position: int, logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> None:
        """Copy one router call's routing of MoE layer `position` at the layer's cursor, in place."""
        slots = index.shape[-1]
        index, weight = index.reshape(-1, slots), weight.detach().reshape(-1, slots)
        n = index.shape[0]
        if slots < self.slots:  # a call with fewer slots than allocated: the rest compute nothing
            index = torch.nn.functional.pad(index, (0, self.slots - slots), value=-1)
            weight = torch.nn.functional.pad(weight, (0, self.slots - slots))
        elif slots > self.slots:
            raise ValueError(f"MoE layer {position}: the router selected {slots} experts per token, more than the "
                             f"{self.slots} the trace was allocated for")
        fill = getattr(self, f"fill{position}")
        at = (fill + torch.arange(n, device=fill.device)).clamp_max(self.capacity)
        valid = (index >= 0) & (index < self.num_experts[position])
        getattr(self, f"experts{position}").index_copy_(0, at, torch.where(valid, index, -1).to(torch.int16))
        getattr(self, f"weights{position}").index_copy_(0, at, torch.where(valid, weight, 0).to(torch.float16))
        getattr(self, f"phase{position}").index_copy_(0, at, getattr(self, f"current{position}").expand(n))
        if self.probs:
            probs = router_probs(logits.detach().reshape(n, -1), self.scoring)
            width = getattr(self, f"probs{position}").shape[-1]
            probs = torch.nn.functional.pad(probs, (0, width - probs.shape[-1]))  # narrower routers: zeros
            getattr(self, f"probs{position}").index_copy_(0, at, probs.to(torch.float16))
        fill += n

    def drain(self) -> list[dict[str, np.ndarray | int]]:
        """Host copies of what each layer holds since the last drain, in call order (experts, weights, phase,
        probs, overflow), then empty: one read of the device per layer."""
        out = []
        for p in range(len(self.num_experts)):
            fill = int(getattr(self, f"fill{p}"))
            n = min(fill, self.capacity)
            taken = {name: getattr(self, f"{name}{p}")[:n].cpu().numpy()
                     for name in ("experts", "weights", "phase") + (("probs",) if self.probs else ())}
            out.append({**taken, "overflow": fill - n})
            getattr(self, f"fill{p}").zero_()
        return out

    def reset(self) -> None:
        for p in range(len(self.num_experts)):
            getattr(self, f"fill{p}").zero_()
