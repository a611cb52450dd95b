"""Dynamic-k expert selectors.

A selector maps router probabilities to a keep-mask over *rank positions*:

    mask = selector(probs, k_max, k_min=1, **params)

* ``probs``: ``Tensor[T, E]`` of any float dtype; each row is a probability
  distribution over the E routed experts (rows sum to ~1). Computation is done
  in fp32 whatever the input dtype.
* ``k_max``: ``1 <= k_max <= E``; ``k_min``: ``1 <= k_min <= k_max``.
* returns ``bool Tensor[T, k_max]`` on ``probs.device``: column ``j`` means
  "keep the (j+1)-th most probable expert" (descending order). Every row is a
  prefix mask (True...True False...False) with between ``k_min`` and ``k_max``
  Trues. ``k = mask.sum(-1)``.

Each selector first computes an unclamped k per token from the sorted
probabilities ``p_(1) >= p_(2) >= ... >= p_(E)``, then clamps it to
``[k_min, k_max]``. The mask depends only on the sorted *values*, so ties
between experts cannot change it; the caller picks which expert fills a rank
(use ``torch.sort(..., descending=True, stable=True)`` or ``torch.topk``).

All selectors are vectorised on the input's device: no Python loop over tokens
and no host sync (no ``.item()``/``.tolist()``); the only host-side work is the
validation of Python ints/floats and of tensor shapes.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping

import torch

from .selector_args import SelectorError, _as_int, _check_bounds, _check_ks, _check_ratio, _check_unit
from .selector_registry import PROFILER_KEYWORDS, SELECTOR_SPECS, SHARED_PARAMS

__all__ = [
    "SelectorFn",
    "SelectorError",
    "SELECTORS",
    "topk",
    "kneedle",
    "cumsum",
    "entropy",
    "gap_ratio",
    "min_p",
    "random_k",
    "layer_k",
    "get_selector",
    "validate_params",
    "mask_from_k",
]

SelectorFn = Callable[..., torch.Tensor]
SELECTORS: dict[str, SelectorFn] = {}  # name -> the function implementing its declaration in selector_registry.py


def implements(name: str) -> Callable[[SelectorFn], SelectorFn]:
    """Register `fn` as the policy declared under `name`; its keywords and defaults must be the declaration's."""
    def register(fn: SelectorFn) -> SelectorFn:
        declared = {k: default for k, (default, _) in {**SHARED_PARAMS, **SELECTOR_SPECS[name].params}.items()}
        signature = inspect.signature(fn).parameters
        found = {k: p.default for k, p in signature.items() if k not in ("probs", *PROFILER_KEYWORDS)}
        found["k_max"] = declared["k_max"]  # required by the function; the app's default (null: the job's topk)
        if found != declared:
            raise TypeError(f"selector {name!r}: {fn.__name__}{inspect.signature(fn)} does not match its declaration "
                            f"in selector_registry.py ({declared})")
        SELECTORS[name] = fn
        return fn
    return register

# Absolute tolerance on the cumulative mass in ``cumsum`` (fp32 sums of
# probabilities rarely land exactly on 1.0).
CUMSUM_TOL = 1e-6
# A row counts as uniform for ``kneedle`` when p_(1) - p_(E) <= this.
KNEEDLE_FLAT_TOL = 1e-7
# Relative slack on the perplexity in ``entropy``, so that a distribution that is
# uniform over n experts gives n, not n + 1, despite fp32 rounding in exp(H).
ENTROPY_REL_TOL = 1e-5


def _prepare(probs: Any, k_max: Any, k_min: Any, where: str) -> tuple[torch.Tensor, int, int]:
    """Validate inputs (host-side only) and return (fp32 probs, k_max, k_min)."""
    if not isinstance(probs, torch.Tensor):
        raise SelectorError(f"{where}: probs must be a torch.Tensor, got {type(probs).__name__}")
    if probs.dim() != 2:
        raise SelectorError(f"{where}: probs must be 2-D [T, E], got shape {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise SelectorError(f"{where}: probs must be a float tensor, got {probs.dtype}")
    k_max, k_min = _check_bounds(k_max, k_min, probs.shape[1], where)
    return probs.to(torch.float32), k_max, k_min


def _sorted_desc(p: torch.Tensor, n: int) -> torch.Tensor:
    """The n largest values of each row, in descending order (values only)."""
    if n == p.shape[1]:
        return torch.sort(p, dim=1, descending=True, stable=True).values
    return torch.topk(p, n, dim=1, largest=True, sorted=True).values


def _first_true(mask: torch.Tensor) -> torch.Tensor:
    """0-based index of the first True in each row, or n (= width) if none."""
    n = mask.shape[1]
    idx = torch.arange(n, device=mask.device, dtype=torch.long)
    return torch.where(mask, idx, torch.full_like(idx, n)).amin(dim=1)


def _ramp(n: int, device: torch.device) -> torch.Tensor:
    """x_i = i / (n - 1): cached per (n, device) in eager (no arange kernel per call); built in the graph when traced
    (a compiled graph folds it, and a cached tensor would be a graph input)."""
    if torch.compiler.is_compiling():
        return torch.arange(n, device=device, dtype=torch.float32) / (n - 1)
    return _cached_ramp(n, device)


def _columns(n: int, device: torch.device) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return torch.arange(n, device=device).unsqueeze(0)
    return _cached_columns(n, device)


@functools.lru_cache(maxsize=64)
def _cached_ramp(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device, dtype=torch.float32) / (n - 1)


@functools.lru_cache(maxsize=64)
def _cached_columns(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device).unsqueeze(0)


def _finish(k: torch.Tensor, k_min: int, k_max: int) -> torch.Tensor:
    return mask_from_k(k.to(torch.long).clamp(k_min, k_max), k_max)


def mask_from_k(k: torch.Tensor, k_max: int) -> torch.Tensor:
    """Prefix mask: ``mask[t, j] = j < k[t]`` for j in 0..k_max-1 (bool ``[T, k_max]``)."""
    k_max = _as_int(k_max, "mask_from_k: k_max")
    if k_max < 0:
        raise SelectorError(f"mask_from_k: k_max must be >= 0, got {k_max}")
    if not isinstance(k, torch.Tensor):
        raise SelectorError(f"mask_from_k: k must be a torch.Tensor, got {type(k).__name__}")
    cols = torch.arange(k_max, device=k.device)
    return cols < k.unsqueeze(-1)


# --------------------------------------------------------------------------- selectors


@implements("topk")
def topk(probs: torch.Tensor, k_max: int, k_min: int = 1, k: int | None = None) -> torch.Tensor:
    """Static top-k (baseline): keep the k most probable experts, k = ``k`` (default k_max).

    ``k`` must lie in [k_min, k_max].
    """
    p, k_max, k_min = _prepare(probs, k_max, k_min, "topk")
    kk = k_max if k is None else _as_int(k, "topk: k")
    if not k_min <= kk <= k_max:
        raise SelectorError(f"topk: k={kk} must be in [k_min={k_min}, k_max={k_max}]")
    return mask_from_k(torch.full((p.shape[0],), kk, dtype=torch.long, device=p.device), k_max)


@implements("kneedle")
def kneedle(probs: torch.Tensor, k_max: int, k_min: int = 1) -> torch.Tensor:
    """Kneedle elbow of the sorted curve: k = argmax_i (y_i - x_i) + 1 over i = 0..E-1,
    x_i = i/(E-1), y_i = (p_(1) - p_(i+1)) / (p_(1) - p_(E)); first maximum on ties.

    Uniform rows (p_(1) - p_(E) <= 1e-7) give k_max; E == 1 gives 1. A curve with
    no convex bend (e.g. a plateau of equal top experts) gives argmax at i=0, so k=1.
    """
    p, k_max, k_min = _prepare(probs, k_max, k_min, "kneedle")
    T, E = p.shape
    if E == 1:
        return mask_from_k(torch.ones(T, dtype=torch.long, device=p.device), k_max)
    # few kernels: this runs once per MoE layer per forward
    s = torch.sort(p, dim=1, descending=True).values
    top = s[:, :1]
    span = top - s[:, -1:]
    d = (top - s) / span.clamp_min(KNEEDLE_FLAT_TOL) - _ramp(E, p.device)  # y_i - x_i
    k = d.argmax(dim=1, keepdim=True) + 1  # torch.argmax returns the first maximum
    k = k.masked_fill(span <= KNEEDLE_FLAT_TOL, k_max)  # uniform rows: nothing to cut on
    return _columns(k_max, p.device) < k.clamp(k_min, k_max)


@implements("cumsum")
def cumsum(probs: torch.Tensor, k_max: int, k_min: int = 1, threshold: float = 0.9) -> torch.Tensor:
    """Top-p: smallest k with sum_{j<=k} p_(j) >= threshold - 1e-6; k_max if not reached
    within k_max experts.
    """
    p, k_max, k_min = _prepare(probs, k_max, k_min, "cumsum")
    thr = _check_unit(threshold, "threshold", "cumsum")
    cs = torch.cumsum(_sorted_desc(p, k_max), dim=1)
    k = _first_true(cs >= thr - CUMSUM_TOL) + 1  # k_max + 1 when never reached -> clamped to k_max
    return _finish(k, k_min, k_max)


@implements("entropy")
def entropy(probs: torch.Tensor, k_max: int, k_min: int = 1) -> torch.Tensor:
    """Perplexity: k = ceil(exp(H(p))), H = -sum_e p_e ln p_e in nats (0 ln 0 = 0).

    A relative slack of 1e-5 absorbs fp32 rounding (uniform over n experts -> n).
    """
    p, k_max, k_min = _prepare(probs, k_max, k_min, "entropy")
    h = -torch.special.xlogy(p, p).sum(dim=1)
    perp = torch.exp(h) * (1.0 - ENTROPY_REL_TOL)
    perp = torch.nan_to_num(perp, nan=float(k_max), posinf=float(k_max), neginf=1.0)
    k = torch.ceil(perp.clamp(0.0, float(k_max)))
    return _finish(k, k_min, k_max)


@implements("gap_ratio")
def gap_ratio(probs: torch.Tensor, k_max: int, k_min: int = 1, ratio: float = 2.0) -> torch.Tensor:
    """First j (1-based, j < k_max) with p_(j) / p_(j+1) >= ratio gives k = j; none gives k_max.

    p_(j+1) == 0 counts as an infinite ratio.
    """
    p, k_max, k_min = _prepare(probs, k_max, k_min, "gap_ratio")
    r = _check_ratio(ratio, "gap_ratio")
    if k_max == 1:
        return mask_from_k(torch.ones(p.shape[0], dtype=torch.long, device=p.device), k_max)
    s = _sorted_desc(p, k_max)
    hi, lo = s[:, :-1], s[:, 1:]
    zero = lo <= 0
    big = torch.where(zero, torch.ones_like(hi), hi / torch.where(zero, torch.ones_like(lo), lo)) >= r
    k = _first_true(zero | big) + 1  # k_max when no gap among j = 1..k_max-1
    return _finish(k, k_min, k_max)


@implements("min_p")
def min_p(probs: torch.Tensor, k_max: int, k_min: int = 1, alpha: float = 0.1) -> torch.Tensor:
    """Min-p: keep the experts with p_e >= alpha * p_(1), i.e. k = #{e : p_e >= alpha * p_(1)}."""
    p, k_max, k_min = _prepare(probs, k_max, k_min, "min_p")
    a = _check_unit(alpha, "alpha", "min_p")
    top = p.amax(dim=1, keepdim=True)
    k = (p >= a * top).sum(dim=1)
    return _finish(k, k_min, k_max)


def _hash_uniform(x: torch.Tensor) -> torch.Tensor:
    """A stateless pseudo-random number in [0, 1) per element: frac(sin(x) * 43758.5453) (a common shader hash),
    computed in fp64 so that it is the same on every device and under compile."""
    return torch.frac(torch.sin(x.double()) * 43758.5453).abs()


@implements("random_k")
def random_k(probs: torch.Tensor, k_max: int, k_min: int = 1, keep: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Random dropping (a baseline): each of the slots k_min+1..k_max is kept with probability ``keep``, so
    k = k_min + #{kept} and the mean k is k_min + keep * (k_max - k_min); the kept experts are the top-k of that k.

    The draws are a seeded hash of the token's router probabilities (no RNG state, so the same token gets the same k
    on every run and device, and compiled / captured code changes no state per call); they ignore how confident the
    router is, which is what a dynamic selector is compared against.
    """
    p, k_max, k_min = _prepare(probs, k_max, k_min, "random_k")
    q = _check_unit(keep, "keep", "random_k")
    s = _as_int(seed, "random_k: seed")
    slots = _columns(k_max, p.device).double()  # [1, k_max]
    ranked = torch.sort(p, dim=1, descending=True).values.double()  # sorted values only: expert order changes nothing
    mix = (ranked * (1.0 + _columns(p.shape[1], p.device).double())).sum(1, keepdim=True)  # [T, 1]
    draws = _hash_uniform(mix * 7919.0 + slots * 12.9898 + s * 78.233)  # [T, k_max]
    kept = (draws < q) & (slots >= k_min)
    return _finish(kept.sum(1) + k_min, k_min, k_max)


@implements("layer_k")
def layer_k(probs: torch.Tensor, k_max: int, k_min: int = 1, ks: Any = None, position: int = 0) -> torch.Tensor:
    """Per-layer static k (a baseline, LExI / Alloc-MoE style): every token of MoE layer ``position`` (0-based, in
    model order) keeps ks[position] experts; ``ks`` None keeps k_max everywhere. The profiler passes ``position``.
    """
    p, k_max, k_min = _prepare(probs, k_max, k_min, "layer_k")
    kk = k_max if ks is None else _as_int(ks[position], f"layer_k: ks[{position}]")
    return _finish(torch.full((p.shape[0],), kk, dtype=torch.long, device=p.device), k_min, k_max)


if set(SELECTORS) != set(SELECTOR_SPECS):  # a declared selector without its function fails here, at import
    raise TypeError(f"selectors declared but not implemented: {sorted(set(SELECTOR_SPECS) - set(SELECTORS))}")

# Extra (non-k) parameters and their checks, per selector.
_PARAM_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "threshold": lambda v, where: _check_unit(v, "threshold", where),
    "alpha": lambda v, where: _check_unit(v, "alpha", where),
    "ratio": lambda v, where: _check_ratio(v, where),
    "keep": lambda v, where: _check_unit(v, "keep", where),
    "seed": lambda v, where: _as_int(v, f"{where}: seed"),
    "ks": _check_ks,
}


def _valid_names() -> str:
    return ", ".join(sorted(SELECTORS))


def _param_names(fn: SelectorFn) -> list[str]:
    return [n for n in inspect.signature(fn).parameters if n not in ("probs", *PROFILER_KEYWORDS)]


def takes_position(fn: SelectorFn) -> bool:
    """Whether the selector wants the MoE layer's position (``position=``): a per-layer rule."""
    return "position" in inspect.signature(fn).parameters


def takes_index(fn: SelectorFn) -> bool:
    """Whether the selector wants the candidates' expert ids (``index=``, [..., k_max])."""
    return "index" in inspect.signature(fn).parameters


def get_selector(name_or_fn: str | SelectorFn) -> SelectorFn:
    """Look a selector up by name in SELECTORS, or pass a callable through unchanged."""
    if isinstance(name_or_fn, str):
        try:
            return SELECTORS[name_or_fn]
        except KeyError:
            raise SelectorError(
                f"unknown selector {name_or_fn!r}; valid selectors: {_valid_names()}"
            ) from None
    if callable(name_or_fn):
        return name_or_fn
    raise SelectorError(
        f"selector must be a name ({_valid_names()}) or a callable, got {type(name_or_fn).__name__}"
    )


def validate_params(name: str, params: Mapping[str, Any], num_experts: int) -> None:
    """Check a selector's params before a run; raise SelectorError (one line) on the first problem.

    ``params`` may hold ``k_max``, ``k_min`` and the selector's own keywords (``k``,
    ``threshold``, ``ratio`` or ``alpha``). A missing ``k_max`` is checked as if it were
    ``num_experts``.
    """
    if not isinstance(name, str):
        raise SelectorError(f"validate_params expects a selector name, got {type(name).__name__}")
    fn = get_selector(name)
    where = f"selector {name!r}"
    num_experts = _as_int(num_experts, f"{where}: num_experts")
    if num_experts < 1:
        raise SelectorError(f"{where}: num_experts must be >= 1, got {num_experts}")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise SelectorError(f"{where}: params must be a mapping, got {type(params).__name__}")
    valid = _param_names(fn)
    unknown = sorted(str(p) for p in params if p not in valid)
    if unknown:
        raise SelectorError(
            f"{where}: unknown parameter(s) {', '.join(unknown)}; valid parameters: {', '.join(valid)}"
        )
    k_max, k_min = _check_bounds(params.get("k_max", num_experts), params.get("k_min", 1), num_experts, where)
    if params.get("k") is not None:
        k = _as_int(params["k"], f"{where}: k")
        if k < 1:
            raise SelectorError(f"{where}: k must be >= 1, got {k}")
        if not k_min <= k <= k_max:
            raise SelectorError(f"{where}: k={k} must be in [k_min={k_min}, k_max={k_max}]")
    for pname, check in _PARAM_CHECKS.items():
        if pname in params:
            check(params[pname], where)
