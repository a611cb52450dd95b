"""A plain expert-cache simulator, one capacity at a time: the reference the stack passes of
runner/profiler/caching.py are tested against."""
from __future__ import annotations


def simulate_one(refs: list[int], capacity: int, policy: str) -> int:
    """Hits of one cache of `capacity` experts, the plain way: a list, evictions by the documented rules (LRU; LFU:
    fewest references so far, ties the least recently used; OPT: the one used again furthest ahead, never-again
    first, ties the least recently used)."""
    cached: list[int] = []
    last: dict[int, int] = {}
    count: dict[int, int] = {}
    hits = 0
    for i, x in enumerate(refs):
        count[x] = count.get(x, 0) + 1
        if x in cached:
            hits += 1
        else:
            if len(cached) == capacity:
                def next_use(y):
                    later = [j for j in range(i + 1, len(refs)) if refs[j] == y]
                    return later[0] if later else len(refs) + 1

                key = {"lru": lambda y: (last[y],), "lfu": lambda y: (count[y], last[y]),
                       "opt": lambda y: (-next_use(y), last[y])}[policy]
                cached.remove(min(cached, key=key))
            cached.append(x)
        last[x] = i
    return hits
