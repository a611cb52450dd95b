"""Every selector declared once, torch-free: its name, what it does, its parameters with their defaults and help.

The library's policies (runner/profiler/selectors.py) implement these declarations (`@implements(name)` checks the
function's keywords and defaults against them at import); the app's schema takes the field help of `selector.*` from
here, its checks the names (`APP_SELECTORS`), and tests/unit/test_selector_registry.py holds the schema's fields and
conf/selector/*.yaml to them. Adding a selector: register it here, implement it in selectors.py, add its yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# `selector=router`: the model's own router at its top-k, no per-token selection (the app's default; the report and
# the comparisons label it so). Not a policy of the library: the router does that itself.
OWN_ROUTING = "router"

# the keywords every policy takes: the candidate pool and the floor of the per-token k
SHARED_PARAMS: dict[str, tuple[Any, str]] = {
    "k_max": (None, "candidate experts per token; null: the job's topk"),
    "k_min": (1, "fewest experts per token"),
}


@dataclass(frozen=True)
class SelectorSpec:
    name: str
    summary: str
    params: dict[str, tuple[Any, str]] = field(default_factory=dict)  # own keyword -> (default, help)


SELECTOR_SPECS: dict[str, SelectorSpec] = {}


def register_selector(name: str, summary: str, **params: tuple[Any, str]) -> SelectorSpec:
    """Declare a selector (lm-eval's register_* style); a second declaration of a name is an error."""
    if name in SELECTOR_SPECS or name == OWN_ROUTING:
        raise ValueError(f"selector {name!r} is declared twice")
    SELECTOR_SPECS[name] = spec = SelectorSpec(name, summary, dict(params))
    return spec


register_selector("topk", "static top-k under a k_max pool (library use), not the model's own routing",
                  k=(None, "selector topk under a k_max pool (library use), not the model's own routing"))
register_selector("kneedle", "per-token k at the knee of the sorted router probabilities")
register_selector("cumsum", "smallest k whose probability mass reaches a threshold (top-p)",
                  threshold=(0.9, "cumsum: smallest k whose probability mass reaches it (top-p)"))
register_selector("entropy", "k from the entropy of the router distribution (its perplexity)")
register_selector("gap_ratio", "cut where the ratio of consecutive sorted probabilities reaches a ratio",
                  ratio=(2.0, "gap_ratio: cut where p(i)/p(i+1) reaches it"))
register_selector("min_p", "keep the experts whose probability is at least alpha times the largest",
                  alpha=(0.1, "min_p: keep experts with p >= alpha * p_max"))

register_selector("random_k", "random dropping (a baseline): each slot after k_min kept with probability keep",
                  keep=(0.5, "random_k: each slot after k_min kept with this probability (a baseline)"),
                  seed=(0, "random_k: seed of its draws (a hash of the router output, no RNG state)"))
register_selector("layer_k", "per-layer static k (a baseline): MoE layer i keeps ks[i] experts per token",
                  ks=(None, "layer_k: a k per MoE layer (null: k_max everywhere; target_k splits a budget)"))

SELECTOR_NAMES = tuple(SELECTOR_SPECS)

# keywords the profiler passes to a policy whose function takes them (not parameters a user sets): the MoE layer's
# position in model order (per-layer rules such as layer_k) and the candidates' expert ids (the ablation)
PROFILER_KEYWORDS = ("position", "index")

# compute-matched selectors (calibrate.py): selector -> (the parameter its k is monotone in, the range bisected, whether
# on a log scale)
CALIBRATED = {"cumsum": ("threshold", 0.0, 1.0, False), "min_p": ("alpha", 0.0, 1.0, False),
              "gap_ratio": ("ratio", 1.0, 1e4, True), "random_k": ("keep", 0.0, 1.0, False)}
# per-layer static k: target_k splits the budget over the layers by their sensitivity (calibrate.allocate_layer_k)
LAYER_BUDGET = "layer_k"

# the app's calibration keys of `selector.*` (runner/job/calibration.py), beside the policies' parameters
CALIBRATION_PARAMS: dict[str, tuple[Any, str]] = {
    "target_k": (None, "compute-matched: calibrate the selector's parameter (cumsum threshold, min_p alpha, gap_ratio "
                       "ratio, random_k keep) so its mean k on the calibration batches is this; with router, the "
                       "static top-k at this (integer) k"),
    "calibration_batches": (None, "the job's first batches, set aside to calibrate on (evaluation starts after "
                                  "them); null: 2 with target_k, else none. Give every job of a comparison the same "
                                  "value so they evaluate the same batches"),
}


def param_help(name: str) -> str:
    """The help of a selector parameter, shared or own (one declaration per name across the selectors)."""
    if name in SHARED_PARAMS:
        return SHARED_PARAMS[name][1]
    if name in CALIBRATION_PARAMS:
        return CALIBRATION_PARAMS[name][1]
    return next(spec.params[name][1] for spec in SELECTOR_SPECS.values() if name in spec.params)


def all_params() -> tuple[str, ...]:
    """Every parameter name a selector takes, shared first, in declaration order."""
    own = [p for spec in SELECTOR_SPECS.values() for p in spec.params]
    return (*SHARED_PARAMS, *dict.fromkeys(own))
