"""Routing metric definitions: every per-layer and per-expert routing number of the frames, defined once.

Definitions (p = the router's distribution over experts for one token, in fp32; S = the selected set):
  router_entropy   H(p) / ln E, averaged over tokens            (H in nats; 1 = uniform router)
  top1_prob        p_(1), averaged over tokens
  top1_margin      p_(1) - p_(2), averaged over tokens
  selected_mass    sum_{e in S} p_e, averaged over tokens
  k                |S| per token (sentinel / zero-compute slots excluded); k_mean, k_hist
  load c_e         number of (token, slot) assignments to expert e (zero-count experts included)
  gate_mass G_e    sum of the combine weights given to expert e
  importance I_e   sum of p_e over tokens
  load_cv          std(c) / mean(c) (population std, zero-count experts included)
  load_jain        Jain's index (sum c)^2 / (E * sum c^2) = 1 / (1 + load_cv^2) (1 = balanced, 1/E = one expert)
  load_gini        2 * sum_i i * c_(i) / (E * sum c) - (E + 1) / E, c sorted ascending, i = 1..E
  load_entropy     -sum f_e ln f_e / ln E, f = c / sum c (nats over nats; 1 = perfectly balanced)
  load_max_mean    max(c) / mean(c); load_maxvio = load_max_mean - 1 (MaxVio, Loss-Free Balancing)
  dead_experts     number of experts with c_e = 0
  cold_experts     number of experts with f_e < COLD_SHARE / E (below a tenth of the uniform share; dead included)
  distinct_experts_per_call  mean over router calls of #{e : the call's c_e > 0}; distinct_experts_uniform: the mean
                   over calls of E * (1 - (1 - k/E)^B), what uniform routing of the call's B tokens at its mean k gives
  topk_boundary_margin  (min_{e in S} p_e - max_{e not in S} p_e) / min_{e in S} p_e, averaged over the tokens with
                   1 <= |S| < width (a token with nothing, or everything, selected has no boundary)
  capacity C       ceil(T * k / E * cf) for one router call (Megatron-Core get_capacity): T tokens, k slots per token
  drop_rate_cf<cf> (drop_rate_cf1_25 for cf 1.25) sum over calls of sum_e max(0, c_e - C) divided by sum over calls of T * k (c_e: that call's loads)
  coactivation     C[a, b] = number of tokens with both a and b in S (all pairs), C[a, a] = c_a;
                   P(b | a) = C[a, b] / c_a
  transitions      for consecutive MoE layers l, l+1: T[a, b] = number of tokens with a in S^l and b in S^(l+1)
  jaccard_next     |S^l & S^(l+1)| / |S^l | S^(l+1)| per token (expert ids compared as numbers), averaged over the
                   tokens with a nonempty union; on layer l
  lookahead_recall |P^(l+1) & S^(l+1)| / |S^(l+1)| per token, P^(l+1) the top-k of layer l+1's router applied to
                   layer l's router input (a layer-ahead prefetcher), averaged over tokens with S^(l+1) nonempty; on l
  jaccard_random   the same expectation under uniform random routing: |S^l| and |S^(l+1)| drawn independently from
                   the two layers' k histograms, the sets uniform among the E experts (the intersection hypergeometric)
  count_random     coactivation: sum_{a != b} C[a, b] / (E (E - 1)), the count every pair would get if each token's
                   set were uniform at its k; transitions: sum T / (E^l E^(l+1)); lift = count / count_random
  top-1 expert     of the experts in S, the one of highest p (under a native top-k: argmax p); none where S is empty
  N_x(e)           occurrences of token id x (an input id of the forward) whose top-1 expert is e; N_x = sum_e N_x(e)
  vocab_specialization  mean over the ids with N_x >= min_token_count of max_e N_x(e) / N_x (OLMoE, §5);
                   vocab_ids: how many ids that is; vocab_tokens: sum_x N_x (the tokens paired with their id)
p: softmax of the logits for softmax routers; sigmoid scores normalised to sum 1 for sigmoid routers;
the router's own probabilities where it returns them.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


from handlers.base import Scoring

SUMS = ("entropy", "top1", "margin", "selected_mass", "boundary_margin", "boundary_tokens")


def router_probs(logits: torch.Tensor, scoring: Scoring) -> torch.Tensor:
    logits = logits.float()
    if scoring == "softmax":
        return torch.softmax(logits, dim=-1)
    if scoring == "sigmoid":
        scores = torch.sigmoid(logits)
        return scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    if scoring == "probs":
        return logits
    raise ValueError(f"unknown scoring {scoring!r}")


def top1_and_margin(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p_(1) and p_(1) - p_(2) over the last dim, as topk(2) gives them (a tied maximum: margin 0), from max
    reductions that inductor fuses (topk is a kernel of its own in a compiled graph)."""
    if probs.shape[-1] < 2:  # one expert: no runner-up, margin 0
        return probs[..., 0], torch.zeros_like(probs[..., 0])
    top1 = probs.amax(-1, keepdim=True)
    at_top = probs == top1
    others = probs.masked_fill(at_top, float("-inf")).amax(-1, keepdim=True)
    second = torch.where(at_top.sum(-1, keepdim=True) > 1, top1, others)
    return top1.squeeze(-1), (top1 - second).squeeze(-1)


def boundary_margin(probs: torch.Tensor, selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token (min over S of p - max outside S of p) / min over S of p, and whether it is defined (1 <= |S| <
    width); `selected` is the [..., width] mask of S. Zero where undefined."""
    lowest = probs.masked_fill(~selected, float("inf")).amin(-1)
    highest = probs.masked_fill(selected, float("-inf")).amax(-1)
    size = selected.sum(-1)
    defined = (size >= 1) & (size < probs.shape[-1])
    margin = (lowest - highest) / lowest.clamp_min(torch.finfo(probs.dtype).tiny)
    return torch.where(defined, margin, 0.0), defined


def capacity_drops(counts: torch.Tensor, factors: torch.Tensor, tokens: int, slots: int,
                   num_experts: int | torch.Tensor) -> torch.Tensor:
    """Assignments one router call drops at each capacity factor: sum_e max(0, c_e - C), C = ceil(T * k / E * cf)
    (Megatron-Core's get_capacity, fp64 as Python computes it). counts: [..., E'] the call's loads (real experts only,
    extra columns zero); factors: [F] fp64; num_experts: E, or an fp64 tensor of E per row that broadcasts against
    counts[..., :1] (calls of layers with different E). Returns [..., F] int64."""
    capacity = torch.ceil(factors * (tokens * slots / num_experts))  # [F], or [..., F] per row
    over = counts.unsqueeze(-2).double() - capacity.unsqueeze(-1)  # [..., F, E']
    return over.clamp_min(0).sum(-1).long()


# an expert is cold when its share of the layer's assignments is below this fraction of the uniform share 1/E
COLD_SHARE = 0.1


def load_balance(counts: np.ndarray, num_experts: int) -> dict[str, float]:
    """Balance metrics of one layer's expert loads (definitions in the module docstring)."""
    c = counts[:num_experts].astype(np.float64)
    total = c.sum()
    if total <= 0:
        nan = float("nan")
        return dict(load_cv=nan, load_jain=nan, load_gini=nan, load_entropy=nan, load_max_mean=nan, load_maxvio=nan,
                    dead_experts=num_experts, cold_experts=num_experts)
    mean = c.mean()
    f = c / total
    nz = f[f > 0]
    ranks = np.arange(1, num_experts + 1)
    gini = 2.0 * (ranks * np.sort(c)).sum() / (num_experts * total) - (num_experts + 1) / num_experts
    return dict(
        load_cv=float(c.std() / mean),
        load_jain=float(total ** 2 / (num_experts * (c ** 2).sum())),
        load_gini=float(gini),
        load_entropy=float(-(nz * np.log(nz)).sum() / math.log(num_experts)) if num_experts > 1 else 1.0,
        load_max_mean=float(c.max() / mean),
        load_maxvio=float(c.max() / mean - 1.0),
        dead_experts=int((c == 0).sum()),
        cold_experts=int((f < COLD_SHARE / num_experts).sum()),
    )


def jaccard_uniform(sizes_a: np.ndarray, sizes_b: np.ndarray, num_experts: int) -> float:
    """E[|A & B| / |A | B|] for A, B uniform random subsets of E experts, |A| = a with probability sizes_a[a] /
    sum(sizes_a) and |B| likewise, independently (k histograms); pairs with an empty union left out, as in
    `jaccard_next`. Exact: |A & B| given a and b is hypergeometric. NaN when nothing qualifies."""
    pa, pb = np.asarray(sizes_a, np.float64), np.asarray(sizes_b, np.float64)
    if pa.sum() <= 0 or pb.sum() <= 0:
        return float("nan")
    pa, pb = pa / pa.sum(), pb / pb.sum()
    total = weight = 0.0
    for a in np.nonzero(pa)[0]:
        for b in np.nonzero(pb)[0]:
            a, b = int(a), int(b)
            if a + b == 0 or a > num_experts or b > num_experts:
                continue
            both = pa[a] * pb[b]
            weight += both
            ways = math.comb(num_experts, b)
            total += both * sum(math.comb(a, i) * math.comb(num_experts - a, b - i) / ways * i / (a + b - i)
                                for i in range(max(0, a + b - num_experts), min(a, b) + 1))
    return total / weight if weight else float("nan")


def expected_distinct(num_experts: float | np.ndarray, k: float | np.ndarray, tokens: float | np.ndarray):
    """E * (1 - (1 - k/E)^B): the experts B tokens touch when each picks k of E uniformly (MoE-CAP; vLLM #54228)."""
    return num_experts * (1.0 - (1.0 - k / num_experts) ** tokens)


def layer_metrics(snapshot: dict[str, np.ndarray], position: int, num_experts: int, router_width: int,
                  top_k: int | None) -> dict[str, Any]:
    """One layer's routing numbers (definitions above) from a recorder snapshot: tokens, k statistics, router
    entropy / confidence means and load balance."""
    hist = snapshot["k_hist"][position]
    tokens = int(hist.sum())
    counts = snapshot["counts"][position]
    assignments = int(counts[:num_experts].sum())
    last = int(np.nonzero(hist)[0].max()) if hist.any() else 0
    raw = snapshot["sums"][position]
    sums = raw / max(tokens, 1)
    boundary = raw[SUMS.index("boundary_margin")] / raw[SUMS.index("boundary_tokens")] \
        if raw[SUMS.index("boundary_tokens")] else float("nan")
    return dict(
        tokens=tokens, assignments=assignments, k_mean=assignments / tokens if tokens else float("nan"),
        k_hist=[int(v) for v in hist[: last + 1]],
        k_at_1=float(hist[1] / tokens) if tokens else float("nan"),
        k_at_max=float(hist[top_k] / tokens) if tokens and top_k and top_k < len(hist) else float("nan"),
        router_entropy=float(sums[0] / math.log(router_width)) if router_width > 1 else 0.0,
        top1_prob=float(sums[1]), top1_margin=float(sums[2]), selected_mass=float(sums[3]),
        topk_boundary_margin=float(boundary), **drop_rates(snapshot, position), **jaccard_next(snapshot, position),
        **lookahead_recall(snapshot, position),
        **distinct_per_call(snapshot, position),
        **load_balance(counts, num_experts),
    )


def drop_rate_column(capacity_factor: float) -> str:
    """The column of a capacity factor: drop_rate_cf1_25 for 1.25 (an underscore for the point, so that pandas
    attribute access, DataFrame.query and duckdb take the name unquoted)."""
    return f"drop_rate_cf{float(capacity_factor)!r}".replace(".", "_")


def drop_rates(snapshot: dict[str, np.ndarray], position: int) -> dict[str, float]:
    """`drop_rate_cf<cf>` per capacity factor: dropped assignments / sum of T * k over the layer's calls."""
    factors = snapshot.get("capacity_factors")
    if factors is None or not len(factors):
        return {}
    drops = snapshot["drops"][position]  # [F + 1]: dropped per factor, then sum of T * k
    return {drop_rate_column(cf): float(drops[i] / drops[-1]) if drops[-1] else float("nan")
            for i, cf in enumerate(factors)}


def _token_mean(snapshot: dict[str, np.ndarray], name: str, column: str, position: int) -> dict[str, float]:
    """{column: sum / tokens} of a (sum, tokens) accumulator; {} when it was not recorded, NaN without tokens."""
    if name not in snapshot:
        return {}
    total, tokens = snapshot[name][position]
    return {column: float(total / tokens) if tokens else float("nan")}


def jaccard_next(snapshot: dict[str, np.ndarray], position: int) -> dict[str, float]:
    """`jaccard_next`: the mean Jaccard similarity of the token's selections at this layer and the next MoE layer."""
    return _token_mean(snapshot, "jaccard", "jaccard_next", position)


def lookahead_recall(snapshot: dict[str, np.ndarray], position: int) -> dict[str, float]:
    """`lookahead_recall`: the mean share of the next MoE layer's selected experts that this layer's router input,
    sent through the next layer's router, predicted (recall@k)."""
    return _token_mean(snapshot, "lookahead", "lookahead_recall", position)


def distinct_per_call(snapshot: dict[str, np.ndarray], position: int) -> dict[str, float]:
    """`distinct_experts_per_call` and its uniform reference `distinct_experts_uniform`: means over router calls
    (recorded with the capacity drops, which see each call's loads)."""
    if "distinct" not in snapshot:
        return {}
    distinct, uniform, calls = snapshot["distinct"][position]
    nan = float("nan")
    return dict(distinct_experts_per_call=float(distinct / calls) if calls else nan,
                distinct_experts_uniform=float(uniform / calls) if calls else nan)


def vocab_specialization(counts: np.ndarray, min_token_count: int) -> tuple[float, int]:
    """From counts[x, e] = N_x(e): the mean over the ids with N_x >= min_token_count of max_e N_x(e) / N_x, and how
    many ids that is (NaN and 0 where none)."""
    totals = counts.sum(-1, dtype=np.int64)
    kept = totals >= min_token_count
    if not kept.any():
        return float("nan"), 0
    return float(np.mean(counts[kept].max(-1) / totals[kept])), int(kept.sum())


def vocab_columns(snapshot: dict[str, np.ndarray], position: int, num_experts: int,
                  min_token_count: int) -> dict[str, Any]:
    """`vocab_specialization`, `vocab_ids` and `vocab_tokens` of one layer (none where the analysis is off)."""
    if "vocab" not in snapshot:
        return {}
    counts = snapshot["vocab"][position][:, :num_experts]
    value, ids = vocab_specialization(counts, min_token_count)
    return dict(vocab_specialization=value, vocab_ids=ids, vocab_tokens=int(counts.sum(dtype=np.int64)))


def expert_metrics(snapshot: dict[str, np.ndarray], position: int, num_experts: int) -> dict[str, np.ndarray]:
    """One layer's per-expert numbers: load c_e, its share of the layer's assignments, gate mass G_e, and the mean
    router probability I_e / tokens."""
    counts = snapshot["counts"][position][:num_experts]
    tokens = max(int(snapshot["k_hist"][position].sum()), 1)
    return dict(tokens=counts.astype(np.int64), load_fraction=counts / max(counts.sum(), 1),
                gate_mass=snapshot["gate_mass"][position][:num_experts],
                mean_prob=snapshot["importance"][position][:num_experts] / tokens)
