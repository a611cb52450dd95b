"""Routing metrics: fixed-size on-device accumulators, filled in bulk, read once when a frame is asked for.

Hot path: a router hook copies the raw routing of one call (logits, indices, weights) into a
preallocated device buffer (one copy kernel each, no host sync). When a buffer fills up, or a frame is
requested, all layers are reduced together in a handful of kernels. Memory is fixed: the buffers plus
O(E) accumulators per layer, whatever the number of tokens seen.

Definitions (p = the router's distribution over experts for one token, in fp32; S = the selected set):
  router_entropy   H(p) / ln E, averaged over tokens            (H in nats; 1 = uniform router)
  top1_prob        p_(1), averaged over tokens
  top1_margin      p_(1) - p_(2), averaged over tokens
  selected_mass    sum_{e in S} p_e, averaged over tokens
  k                |S| per token (sentinel / zero-compute slots excluded); k_mean, k_hist
  load c_e         number of (token, slot) assignments to expert e (zero-count experts included)
  gate_mass G_e    sum of the combine weights given to expert e
  importance I_e   sum of p_e over tokens
  load_cv          std(c) / mean(c) (population std)
  load_gini        2 * sum_i i * c_(i) / (E * sum c) - (E + 1) / E, c sorted ascending, i = 1..E
  load_entropy     -sum f_e ln f_e / ln E, f = c / sum c (1 = perfectly balanced)
  load_max_mean    max(c) / mean(c)
  dead_experts     number of experts with c_e = 0
p: softmax of the logits for softmax routers; sigmoid scores normalised to sum 1 for sigmoid routers;
the router's own probabilities where it returns them.
"""
from __future__ import annotations

import math

import numpy as np
import torch

SUMS = ("entropy", "top1", "margin", "selected_mass")


def router_probs(logits: torch.Tensor, scoring: str) -> torch.Tensor:
    logits = logits.float()
    if scoring == "softmax":
        return torch.softmax(logits, dim=-1)
    if scoring == "sigmoid":
        scores = torch.sigmoid(logits)
        return scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    if scoring == "probs":
        return logits
    raise ValueError(f"unknown scoring {scoring!r}")


class RoutingRecorder:
    """Per-layer routing statistics of `num_layers` MoE layers, accumulated on one device."""

    def __init__(self, num_layers: int, router_width: int, num_experts: list[int], scoring: str,
                 capacity: int | None = None, memory_budget_bytes: int = 256 * 2**20):
        self.num_layers = num_layers
        self.router_width = router_width
        self.num_experts = num_experts  # real (computing) experts per layer; indices >= this are not computed
        self.scoring = scoring
        self.capacity = capacity
        self.memory_budget_bytes = memory_budget_bytes
        self.tokens = [0] * num_layers  # host-side: known from shapes, no sync
        self._fill = [0] * num_layers
        self._logits: torch.Tensor | None = None
        self._index: torch.Tensor | None = None
        self._weight: torch.Tensor | None = None
        self.acc: dict[str, torch.Tensor] | None = None

    # -- allocation ------------------------------------------------------------------------------
    def _allocate(self, logits: torch.Tensor, slots: int) -> None:
        device = logits.device
        self.router_width = logits.shape[-1]  # what the router scores (may differ from its weight's rows)
        L, E = self.num_layers, self.router_width
        if self.capacity is None:
            per_token = L * (E * logits.element_size() + slots * 8)
            self.capacity = int(max(256, min(8192, self.memory_budget_bytes // max(per_token, 1))))
        cap = self.capacity
        self._logits = torch.empty(L, cap, E, dtype=logits.dtype, device=device)
        self._index = torch.full((L, cap, slots), -1, dtype=torch.int32, device=device)
        self._weight = torch.zeros(L, cap, slots, dtype=torch.float32, device=device)
        if self.acc is None:
            f64 = dict(dtype=torch.float64, device=device)
            self.acc = {
                "counts": torch.zeros(L, E, dtype=torch.int64, device=device),
                "gate_mass": torch.zeros(L, E, **f64),
                "importance": torch.zeros(L, E, **f64),
                "k_hist": torch.zeros(L, E + 1, dtype=torch.int64, device=device),
                "sums": torch.zeros(L, len(SUMS), **f64),
            }
            self._real = torch.tensor(self.num_experts, device=device).view(L, 1, 1)

    # -- hot path --------------------------------------------------------------------------------
    @torch.no_grad()
    def record(self, layer: int, logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> None:
        logits = logits.reshape(-1, logits.shape[-1])
        tokens = logits.shape[0]
        slots = index.shape[-1]
        if self._logits is None or slots > self._index.shape[-1]:
            self.flush()
            self._allocate(logits, slots)
        self.tokens[layer] += tokens
        if tokens > self.capacity:  # larger than the buffer: reduce this call directly
            self.flush()
            self._reduce(logits.unsqueeze(0), index.reshape(1, tokens, slots), weight.reshape(1, tokens, slots), [layer])
            return
        if self._fill[layer] + tokens > self.capacity:
            self.flush()
        start = self._fill[layer]
        self._logits[layer, start:start + tokens].copy_(logits)
        self._index[layer, start:start + tokens, :slots].copy_(index.reshape(tokens, slots))
        self._weight[layer, start:start + tokens, :slots].copy_(weight.reshape(tokens, slots))
        self._fill[layer] = start + tokens

    # -- bulk reduction --------------------------------------------------------------------------
    @torch.no_grad()
    def flush(self) -> None:
        if self._logits is None or not any(self._fill):
            return
        fills = self._fill
        if len(set(fills)) == 1:
            n = fills[0]
            self._reduce(self._logits[:, :n], self._index[:, :n], self._weight[:, :n], list(range(self.num_layers)))
        else:
            for layer, n in enumerate(fills):
                if n:
                    sl = slice(layer, layer + 1)
                    self._reduce(self._logits[sl, :n], self._index[sl, :n], self._weight[sl, :n], [layer])
        self._index.fill_(-1)
        self._weight.zero_()
        self._fill = [0] * self.num_layers

    def _reduce(self, logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, layers: list[int]) -> None:
        """Accumulate [L', n, E] logits and [L', n, slots] routing into the accumulators of `layers`."""
        acc = self.acc
        rows = layers if len(layers) != self.num_layers else slice(None)
        real = self._real[rows]
        probs = router_probs(logits, self.scoring)  # [L', n, E]
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
        if probs.shape[-1] >= 2:
            top2 = probs.topk(2, dim=-1).values
            top1, margin = top2[..., 0], top2[..., 0] - top2[..., 1]
        else:
            top1, margin = probs[..., 0], torch.zeros_like(probs[..., 0])
        index = index.long()
        valid = (index >= 0) & (index < real)
        safe = index.clamp(0, self.router_width - 1)
        selected_mass = (probs.gather(-1, safe) * valid).sum(-1)
        k = valid.sum(-1)  # [L', n]
        flat = safe.flatten(1)
        counts = acc["counts"][rows]
        counts.scatter_add_(1, flat, valid.flatten(1).long())
        gate_mass = acc["gate_mass"][rows]
        gate_mass.scatter_add_(1, flat, (weight.double() * valid).flatten(1))
        k_hist = acc["k_hist"][rows]
        k_hist.scatter_add_(1, k, torch.ones_like(k))
        sums = torch.stack([entropy, top1, margin, selected_mass], dim=-1).double().sum(1)  # fp64: order-independent
        if isinstance(rows, slice):
            acc["importance"] += probs.double().sum(1)
            acc["sums"] += sums
        else:  # advanced indexing returned copies: write them back
            acc["counts"][rows] = counts
            acc["gate_mass"][rows] = gate_mass
            acc["k_hist"][rows] = k_hist
            acc["importance"][rows] += probs.double().sum(1)
            acc["sums"][rows] += sums

    # -- read-out --------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray] | None:
        """Host copies of all accumulators (the one sync)."""
        self.flush()
        if self.acc is None:
            return None
        return {name: t.cpu().numpy() for name, t in self.acc.items()}

    def reset(self) -> None:
        self.flush()
        if self.acc is not None:
            for t in self.acc.values():
                t.zero_()
        self.tokens = [0] * self.num_layers

    @property
    def buffer_bytes(self) -> int:
        tensors = [self._logits, self._index, self._weight] + list((self.acc or {}).values())
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def load_balance(counts: np.ndarray, num_experts: int) -> dict[str, float]:
    """Balance metrics of one layer's expert loads (definitions in the module docstring)."""
    c = counts[:num_experts].astype(np.float64)
    total = c.sum()
    if total <= 0:
        nan = float("nan")
        return dict(load_cv=nan, load_gini=nan, load_entropy=nan, load_max_mean=nan, dead_experts=num_experts)
    mean = c.mean()
    f = c / total
    nz = f[f > 0]
    ranks = np.arange(1, num_experts + 1)
    gini = 2.0 * (ranks * np.sort(c)).sum() / (num_experts * total) - (num_experts + 1) / num_experts
    return dict(
        load_cv=float(c.std() / mean),
        load_gini=float(gini),
        load_entropy=float(-(nz * np.log(nz)).sum() / math.log(num_experts)) if num_experts > 1 else 1.0,
        load_max_mean=float(c.max() / mean),
        dead_experts=int((c == 0).sum()),
    )
