"""Expert-cache simulation and routing comparisons on recorded routing (host numpy arrays, e.g. a drained or stored
routing trace): hit rate against cache capacity under LRU, LFU and Belady's OPT, adjacent-token overlap, and the
agreement of two runs' selections of the same tokens. Definitions, tie rules: docs/metrics.md#expert-cache-simulation.

All three policies are stack algorithms (Mattson et al. 1970): each keeps a priority order of the experts that does
not depend on the capacity, and evicts the lowest-priority cached expert, so the cache of capacity C is always the top
C of one stack. One pass over a layer's references gives each reference's stack depth d, a hit for every C >= d:
every capacity 1..E at once. LRU's depths are computed without a loop over references (one [references, E] matrix of
last uses per block); LFU and OPT update the stack once per reference, each update vectorised over the stack.
"""
from __future__ import annotations

import numpy as np

POLICIES = ("lru", "lfu", "opt")
COLD = np.iinfo(np.int64).max  # the depth of a first reference: a miss at every capacity
_BLOCK_CELLS = 1 << 22  # LRU: references x experts per block of the last-use matrix (32 MiB of int64)


def reference_string(selections: list | np.ndarray) -> np.ndarray:
    """The experts of a sequence of tokens as one reference string: token by token, each token's experts in the
    router's slot order (int64)."""
    arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in selections]
    return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)


def lru_depths(refs: np.ndarray, num_experts: int) -> np.ndarray:
    """LRU stack depth of each reference: 1 + the distinct experts referenced since the previous reference to the same
    expert (a hit at every capacity C >= depth); COLD for a first reference."""
    refs = np.asarray(refs, dtype=np.int64)
    depths = np.empty(len(refs), dtype=np.int64)
    last = np.full(num_experts, -1, dtype=np.int64)  # each expert's last reference so far
    block = max(1, _BLOCK_CELLS // max(num_experts, 1))
    for start in range(0, len(refs), block):
        chunk = refs[start:start + block]
        n = len(chunk)
        uses = np.full((n + 1, num_experts), -1, dtype=np.int64)
        uses[0] = last
        uses[np.arange(1, n + 1), chunk] = start + np.arange(n)
        uses = np.maximum.accumulate(uses, axis=0)  # row j: last use of each expert before reference start + j
        before = uses[:-1]
        previous = before[np.arange(n), chunk]
        depth = (before > previous[:, None]).sum(axis=1) + 1  # the experts used since the previous use, and itself
        depths[start:start + n] = np.where(previous < 0, COLD, depth)
        last = uses[-1]
    return depths


def next_uses(refs: np.ndarray) -> np.ndarray:
    """For each reference, the index of the next reference to the same expert (len(refs) when there is none)."""
    refs = np.asarray(refs, dtype=np.int64)
    n = len(refs)
    order = np.lexsort((np.arange(n), refs))  # by expert, then time
    following = np.full(n, n, dtype=np.int64)
    same = refs[order[1:]] == refs[order[:-1]]
    following[order[:-1][same]] = order[1:][same]
    return following


def priority_depths(refs: np.ndarray, num_experts: int, policy: str) -> np.ndarray:
    """Stack depth of each reference under `policy` (lru, lfu or opt), COLD for a first reference, by Mattson's stack
    update: the referenced expert goes on top and the experts above its old depth are merged downwards, the
    lower-priority one of each pair moving down (a running minimum of priority over the stack).

    Priorities (higher stays), each a total order so that no two experts tie:
    lru: the last use; lfu: (references so far, last use): the least frequently used goes, of those the least
    recently used; opt: the next use, sooner stays; experts never used again go first, the least recently used of them
    first (which of them goes does not change OPT's hits)."""
    refs = np.asarray(refs, dtype=np.int64)
    n = len(refs)
    if policy not in POLICIES:
        raise ValueError(f"unknown cache policy {policy!r}; known: {list(POLICIES)}")
    following = next_uses(refs) if policy == "opt" else None
    priority = np.zeros(num_experts, dtype=np.int64)
    counts = np.zeros(num_experts, dtype=np.int64)
    stack = np.zeros(0, dtype=np.int64)  # experts referenced so far, top first
    position = np.full(num_experts, -1, dtype=np.int64)  # each expert's index in the stack
    depths = np.empty(n, dtype=np.int64)
    for i, x in enumerate(refs.tolist()):
        at = position[x]
        depths[i] = COLD if at < 0 else at + 1
        above = stack[:at] if at >= 0 else stack
        if len(above):
            p = priority[above]
            lowest = np.minimum.accumulate(p)  # the running minimum: what moves down past each position
            carry_from = np.concatenate([[0], np.flatnonzero(p[1:] < lowest[:-1]) + 1])  # where a new minimum starts
            carrier = above[carry_from[np.searchsorted(carry_from, np.arange(len(above)), side="right") - 1]]
            # at position j (1 <= j < len): the one of (carrier before j, above[j]) that is not the new carrier stays
            stays = np.where(carrier[1:] == above[1:], carrier[:-1], above[1:])
            moved = np.concatenate([[x], stays, [carrier[-1]]])
        else:
            moved = np.array([x], dtype=np.int64)
        stack = np.concatenate([moved, stack[at + 1:]]) if at >= 0 else moved
        position[moved] = np.arange(len(moved))
        counts[x] += 1
        if policy == "lru":
            priority[x] = i
        elif policy == "lfu":
            priority[x] = counts[x] * (n + 1) + i
        else:
            priority[x] = -following[i] if following[i] < n else -2 * (n + 1) + i
    return depths


def depths(refs: np.ndarray, num_experts: int, policy: str) -> np.ndarray:
    """Each reference's stack depth under `policy` (LRU by the loop-free stack distances)."""
    return lru_depths(refs, num_experts) if policy == "lru" else priority_depths(refs, num_experts, policy)


def hits_by_capacity(stack_depths: np.ndarray, num_experts: int) -> np.ndarray:
    """hits[C - 1] = the references that hit a cache of C experts, C = 1..num_experts."""
    warm = stack_depths[stack_depths != COLD]
    return np.cumsum(np.bincount(warm - 1, minlength=num_experts)[:num_experts])


def simulate(refs: np.ndarray, num_experts: int, policies=POLICIES) -> dict[str, np.ndarray]:
    """policy -> hits at each capacity 1..num_experts of one reference string (hit rate: hits / len(refs))."""
    return {policy: hits_by_capacity(depths(refs, num_experts, policy), num_experts) for policy in policies}


def membership(selections: list, num_experts: int) -> np.ndarray:
    """[tokens, num_experts] bool: which experts each token selected."""
    lengths = np.fromiter((len(s) for s in selections), dtype=np.int64, count=len(selections))
    chosen = np.zeros((len(selections), num_experts), dtype=bool)
    if lengths.sum():
        chosen[np.repeat(np.arange(len(selections)), lengths), reference_string(selections)] = True
    return chosen


def set_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|A ∩ B| / max(|A|, |B|) per row of two [tokens, E] membership matrices (|A ∩ B| / k at a fixed k; 1 exactly
    when the sets are equal; NaN when both are empty)."""
    common = (a & b).sum(axis=1)
    size = np.maximum(a.sum(axis=1), b.sum(axis=1))
    return np.where(size > 0, common / np.maximum(size, 1), np.nan)
