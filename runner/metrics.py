"""Routing metrics: fixed-size on-device accumulators, filled in bulk, read once when a frame is asked for.

Hot path: a router hook keeps a reference to the raw routing of one call (logits, indices, weights): no
kernel, no host sync. Every `capacity` tokens, or when a frame is requested, all layers are reduced
together in a handful of kernels. Memory is bounded: at most `capacity` tokens of pending routing plus
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
    """Per-layer routing statistics of `num_layers` MoE layers, accumulated on one device.

    The hot path launches no kernel: `record()` keeps a reference to the router's own output tensors. When the
    first MoE layer of a forward would take a layer past `capacity` pending tokens, every layer's pending routing
    is concatenated and reduced at once (a fixed handful of kernels for the whole model). Memory is bounded by
    `capacity` tokens of pending routing (or one forward, if larger) plus O(E) accumulators per layer.
    """

    def __init__(self, num_layers: int, router_width: int, num_experts: list[int], scoring: str,
                 capacity: int | None = None):
        self.num_layers = num_layers
        self.router_width = router_width
        self.num_experts = num_experts  # real (computing) experts per layer; indices >= this are not computed
        self.scoring = scoring
        self.capacity = capacity or 8192
        self.tokens = [0] * num_layers  # host-side: known from shapes, no sync
        self._pending: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in range(num_layers)]
        self._pending_tokens = [0] * num_layers
        self.acc: dict[str, torch.Tensor] | None = None

    def _allocate(self, logits: torch.Tensor) -> None:
        device = logits.device
        self.router_width = logits.shape[-1]  # what the router scores (may differ from its weight's rows)
        L, E = self.num_layers, self.router_width
        with torch.inference_mode(False):  # normal tensors, updatable in and out of inference mode
            if len(set(self.num_experts)) == 1:  # a fill kernel, not a host-to-device copy (no sync)
                self._real = torch.full((L, 1, 1), self.num_experts[0], dtype=torch.int64, device=device)
            else:
                self._real = torch.tensor(self.num_experts, device=device).view(L, 1, 1)
            f64 = dict(dtype=torch.float64, device=device)
            self.acc = {
                "counts": torch.zeros(L, E, dtype=torch.int64, device=device),
                "gate_mass": torch.zeros(L, E, **f64),
                "importance": torch.zeros(L, E, **f64),
                "k_hist": torch.zeros(L, E + 1, dtype=torch.int64, device=device),
                "sums": torch.zeros(L, len(SUMS), **f64),
            }

    # -- hot path --------------------------------------------------------------------------------
    def record(self, layer: int, logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> None:
        if logits.requires_grad:
            logits, weight = logits.detach(), weight.detach()
        tokens = index.numel() // index.shape[-1]
        if layer == 0 and self._pending_tokens[0] and self._pending_tokens[0] + tokens > self.capacity:
            self.flush()
        pending = self._pending[layer]
        if pending and pending[-1][1].shape[-1] != index.shape[-1]:  # top-k changed mid-stream
            self.flush()
        pending.append((logits, index, weight))
        self._pending_tokens[layer] += tokens
        self.tokens[layer] += tokens

    # -- bulk reduction --------------------------------------------------------------------------
    @torch.no_grad()
    def flush(self) -> None:
        if not any(self._pending_tokens):
            return
        first = next(p for p in self._pending if p)[0][0]
        if self.acc is None:
            self._allocate(first)
        E = self.router_width
        counts = self._pending_tokens
        widths = {entry[1].shape[-1] for layer in self._pending for entry in layer}
        if len(set(counts)) == 1 and len(widths) == 1:
            n = counts[0]
            flat = [entry for layer in self._pending for entry in layer]
            logits = torch.cat([e[0].reshape(-1, E) for e in flat]).view(self.num_layers, n, E)
            index = torch.cat([e[1].reshape(-1, e[1].shape[-1]) for e in flat]).view(self.num_layers, n, -1)
            weight = torch.cat([e[2].reshape(-1, e[2].shape[-1]) for e in flat]).view(self.num_layers, n, -1)
            self._reduce(logits, index, weight, list(range(self.num_layers)))
        else:
            for layer, entries in enumerate(self._pending):
                if entries:
                    logits = torch.cat([e[0].reshape(-1, E) for e in entries]).unsqueeze(0)
                    index = torch.cat([e[1].reshape(-1, e[1].shape[-1]) for e in entries]).unsqueeze(0)
                    weight = torch.cat([e[2].reshape(-1, e[2].shape[-1]) for e in entries]).unsqueeze(0)
                    self._reduce(logits, index, weight, [layer])
        self._pending = [[] for _ in range(self.num_layers)]
        self._pending_tokens = [0] * self.num_layers

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
        sums = torch.stack([entropy, top1, margin, selected_mass], dim=-1).double().sum(1)  # fp64: order-independent
        importance = probs.double().sum(1)
        if isinstance(rows, slice):
            acc["counts"].scatter_add_(1, flat, valid.flatten(1).long())
            acc["gate_mass"].scatter_add_(1, flat, (weight.double() * valid).flatten(1))
            acc["k_hist"].scatter_add_(1, k, torch.ones_like(k))
            acc["importance"] += importance
            acc["sums"] += sums
        else:
            (layer,) = rows
            acc["counts"][layer].scatter_add_(0, flat[0], valid.flatten(1)[0].long())
            acc["gate_mass"][layer].scatter_add_(0, flat[0], (weight.double() * valid).flatten(1)[0])
            acc["k_hist"][layer].scatter_add_(0, k[0], torch.ones_like(k[0]))
            acc["importance"][layer] += importance[0]
            acc["sums"][layer] += sums[0]

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
        """Device bytes the recorder holds: accumulators plus the routing tensors kept for the next reduction."""
        held = [t for layer in self._pending for entry in layer for t in entry] + list((self.acc or {}).values())
        return sum(t.numel() * t.element_size() for t in held)


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
