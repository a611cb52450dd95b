"""A selector's arguments checked on the host before any tensor work: the k bounds, the unit-interval and ratio
parameters, layer_k's list; each failure a SelectorError of one line. Torch-free."""
from __future__ import annotations

import math
import numbers
import operator
from typing import Any


class SelectorError(ValueError):
    """Bad selector name, parameter or input (the message is one line)."""


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise SelectorError(f"{what} must be an int, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise SelectorError(f"{what} must be an int, got {type(value).__name__} {value!r}") from None


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SelectorError(f"{what} must be a real number, got {type(value).__name__} {value!r}")
    out = float(value)
    if math.isnan(out):
        raise SelectorError(f"{what} must not be NaN")
    return out


def _check_bounds(k_max: Any, k_min: Any, num_experts: int, where: str) -> tuple[int, int]:
    k_max = _as_int(k_max, f"{where}: k_max")
    k_min = _as_int(k_min, f"{where}: k_min")
    if k_max < 1:
        raise SelectorError(f"{where}: k_max must be >= 1, got {k_max}")
    if k_max > num_experts:
        raise SelectorError(f"{where}: k_max={k_max} exceeds the number of experts E={num_experts}")
    if k_min < 1:
        raise SelectorError(f"{where}: k_min must be >= 1, got {k_min}")
    if k_min > k_max:
        raise SelectorError(f"{where}: k_min={k_min} is greater than k_max={k_max}")
    return k_max, k_min


def _check_unit(value: Any, name: str, where: str) -> float:
    v = _as_float(value, f"{where}: {name}")
    if not 0.0 <= v <= 1.0:
        raise SelectorError(f"{where}: {name} must be in [0, 1], got {v}")
    return v


def _check_ratio(value: Any, where: str) -> float:
    v = _as_float(value, f"{where}: ratio")
    if v < 1.0:
        raise SelectorError(f"{where}: ratio must be >= 1, got {v}")
    return v


def _check_ks(value: Any, where: str) -> Any:
    if value is None:
        return value
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise SelectorError(f"{where}: ks must be a list of k per MoE layer, got {value!r}")
    for k in value:
        if _as_int(k, f"{where}: ks entry") < 1:
            raise SelectorError(f"{where}: every k in ks must be >= 1, got {k}")
    return value
