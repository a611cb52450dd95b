"""Which routing analyses the recorder keeps, beyond the load-balance metrics (their definitions: metrics.py).
Torch-free: the runner's schema reads CAPACITY_FACTORS from here without importing torch."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# the capacity factors of the drop-rate columns (drop_rate_cf1_0 ... in the results' layers table)
CAPACITY_FACTORS = (1.0, 1.25, 1.5, 2.0)


@dataclass(frozen=True)
class Analyses:
    """Routing analyses beyond the load-balance metrics (definitions in metrics.py, bytes in docs/metrics.md).
    The top-k boundary margin is always on (two sums). capacity_factors: one `drop_rate_cf<cf>` column each (() for
    none); coactivation: an E x E count matrix per layer and phase (off by default); transitions: an E x E count
    matrix and the Jaccard similarity per pair of consecutive MoE layers and phase, plus each layer's last selection
    (off by default); vocab: a [vocab_size, E] int32 count table of (token id, top-1 expert) per layer and phase, for
    `vocab_specialization` over the ids seen at least min_token_count times (off by default: 412 MB for OLMoE);
    lookahead: each MoE layer's router input sent through the next MoE layer's router, its top-k compared with the
    experts that layer then selects (`lookahead_recall`; off by default: one more router matmul per layer and call)."""
    # opt-in (`analyses=("capacity",)` takes CAPACITY_FACTORS): per-call drop counting cost +3 % prefill and +10 % decode
    # time in eager mode on an H100 (full-width OLMoE, BENCHMARKS.md), over the overhead target of the default profiler
    capacity_factors: tuple[float, ...] = ()
    coactivation: bool = False
    transitions: bool = False
    vocab: bool = False
    lookahead: bool = False
    # ids seen fewer times score high whatever the router does (one occurrence: 1), so they are left out of the mean
    min_token_count: int = 5

    NAMES = ("capacity", "coactivation", "transitions", "vocab", "lookahead")

    def __post_init__(self):
        count = self.min_token_count
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"min_token_count is the fewest occurrences of a token id that count, at least 1; got "
                             f"{count!r}")

    @classmethod
    def of(cls, value: "Analyses | Iterable[str] | None") -> "Analyses":
        """None: the defaults; an Analyses as is; names (`("capacity", "coactivation")`): exactly those on."""
        if value is None or isinstance(value, cls):
            return value or cls()
        names = {value} if isinstance(value, str) else set(value)
        if names - set(cls.NAMES):
            raise ValueError(f"unknown analyses {sorted(names - set(cls.NAMES))}; known: {list(cls.NAMES)}")
        return cls(capacity_factors=CAPACITY_FACTORS if "capacity" in names else (),
                   coactivation="coactivation" in names, transitions="transitions" in names, vocab="vocab" in names,
                   lookahead="lookahead" in names)
