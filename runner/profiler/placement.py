"""Expert-parallel placement simulation: given each expert's measured load (token assignments) in a MoE layer, how
evenly would N ranks be loaded under a placement of the experts on them?

Placements (E experts, N ranks, E divisible by N):
  contiguous    rank(e) = e * N // E                      (the default layout of most engines)
  round_robin   rank(e) = e mod N
  balanced      greedy longest-processing-time on the measured loads: experts in decreasing load, each to the
                least-loaded rank that still has a free slot (every rank holds E / N experts, as memory requires)
  balanced+r<R> R redundant replicas first, as DeepSeek's EPLB does: each goes to the expert with the highest load
                per replica, an expert's load is split evenly among its replicas, then the E + R physical experts are
                packed as `balanced` (ceil((E + R) / N) slots per rank)
Scores: imbalance = max rank load / mean rank load (>= 1; 1 is perfect), balancedness = 1 / imbalance (vLLM's and
SGLang's figure), busiest_rank_tokens = the max rank load. Balanced placements are fitted on the loads they are
scored on unless `score` is given other loads.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

EP_SIZES = (2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Placement:
    name: str
    ep_size: int
    expert_ranks: tuple[tuple[int, ...], ...]  # expert -> the ranks holding a replica of it

    def rank_loads(self, loads: np.ndarray) -> np.ndarray:
        """Each rank's token load when every expert's load is split evenly among its replicas."""
        out = np.zeros(self.ep_size, dtype=np.float64)
        for expert, ranks in enumerate(self.expert_ranks):
            for rank in ranks:
                out[rank] += loads[expert] / len(ranks)
        return out

    def score(self, loads: np.ndarray) -> dict[str, float]:
        ranks = self.rank_loads(np.asarray(loads, dtype=np.float64))
        mean = ranks.mean()
        imbalance = float(ranks.max() / mean) if mean > 0 else float("nan")
        return dict(imbalance=imbalance, balancedness=1.0 / imbalance if mean > 0 else float("nan"),
                    busiest_rank_tokens=float(ranks.max()))


def ep_sizes(num_experts: int, candidates: tuple[int, ...] = EP_SIZES) -> list[int]:
    """The candidate EP sizes that divide the expert count."""
    return [n for n in candidates if n <= num_experts and num_experts % n == 0]


def contiguous(num_experts: int, ep_size: int) -> Placement:
    return Placement("contiguous", ep_size, tuple((e * ep_size // num_experts,) for e in range(num_experts)))


def round_robin(num_experts: int, ep_size: int) -> Placement:
    return Placement("round_robin", ep_size, tuple((e % ep_size,) for e in range(num_experts)))


def balanced(loads: np.ndarray, ep_size: int, redundant: int = 0) -> Placement:
    loads = np.asarray(loads, dtype=np.float64)
    num_experts = len(loads)
    if not 0 <= redundant <= num_experts:  # one loop step per replica: an unbounded count would run for hours
        raise ValueError(f"redundant experts must be between 0 and the {num_experts} experts, got {redundant}")
    replicas = np.ones(num_experts, dtype=np.int64)
    for _ in range(redundant):  # each extra replica to the expert with the highest load per replica (lowest id on ties)
        replicas[int(np.argmax(loads / replicas))] += 1
    physical = [(loads[e] / replicas[e], e) for e in range(num_experts) for _ in range(replicas[e])]
    physical.sort(key=lambda item: (-item[0], item[1]))
    slots = -(-len(physical) // ep_size)
    heap = [(0.0, rank) for rank in range(ep_size)]  # (load, rank): the least-loaded rank with a free slot on top
    used = [0] * ep_size
    ranks: list[list[int]] = [[] for _ in range(num_experts)]
    for load, expert in physical:
        rank_load, rank = heapq.heappop(heap)
        ranks[expert].append(rank)
        used[rank] += 1
        if used[rank] < slots:
            heapq.heappush(heap, (rank_load + load, rank))
    name = "balanced" if redundant == 0 else f"balanced+r{redundant}"
    return Placement(name, ep_size, tuple(tuple(r) for r in ranks))


def placements(loads: np.ndarray, ep_size: int, redundant: tuple[int, ...] = ()) -> list[Placement]:
    """Every placement of one layer's experts on `ep_size` ranks: the fixed layouts, balanced, and balanced with each
    number of redundant experts."""
    num_experts = len(loads)
    return [contiguous(num_experts, ep_size), round_robin(num_experts, ep_size), balanced(loads, ep_size),
            *(balanced(loads, ep_size, r) for r in redundant if r > 0)]
