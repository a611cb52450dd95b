"""One stored number of a baseline: an Entry (model, k, selector, dataset, metric, layer range -> value, tolerance),
its key, and the helpers that turn measured values into entries."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

LOSS_RTOL = 1e-5
ROUTING_RTOL = 2e-3
SWEEP_LOSS_RTOL = 1e-3  # sweeps may run in bf16 on a GPU: ~1e-3 relative between kernels; --loss-rtol to change


class BaselineError(Exception):
    """A usage problem or a missing / corrupt baseline file: reported as one line, exit code 2."""


Value = int | float | str


@dataclass(frozen=True)
class Entry:
    model: str
    metric: str
    value: Value
    k: int | None = None
    selector: str = ""
    dataset: str = ""
    layers: str = ""
    tolerance: float | None = None  # relative; None = exact

    @property
    def key(self) -> str:
        return make_key(self.model, self.k, self.selector, self.dataset, self.metric, self.layers)

    @property
    def identity(self) -> tuple:
        return (self.model, self.k, self.selector, self.dataset, self.layers)

    def sort_key(self) -> tuple:
        first = self.layers.split("-", 1)[0] if self.layers else ""
        return (self.model, self.k is not None, self.k or 0, self.selector, self.dataset, self.metric,
                int(first) if first.lstrip("-").isdigit() else -1, self.layers)


def make_key(model: str, k: int | None, selector: str, dataset: str, metric: str, layers: str) -> str:
    parts = [model, f"k={k}" if k is not None else "", selector, dataset, metric + (f"[{layers}]" if layers else "")]
    return "|".join(p for p in parts if p)


def clean(value: Any) -> Value | None:
    """Numbers as int when integral (written without '.0'), float otherwise; None for missing / NaN."""
    if value is None:
        return None
    if not isinstance(value, (str, list, tuple)):
        import pandas as pd

        if pd.isna(value):  # None, NaN, pandas' NA of a nullable integer column
            return None
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy / torch scalar
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    value = float(value)
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() and abs(value) < 2**63 else value


def span(ids: Sequence[int]) -> str:
    return str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}"


def grouped(model: str, metric: str, per_layer: Iterable[tuple[int, Any]], **fields: Any) -> list[Entry]:
    """One entry per run of consecutive layer ids that share a value."""
    runs: list[tuple[list[int], Value]] = []
    for layer, raw in per_layer:
        value = clean(raw)
        if value is None:
            continue
        layer = int(layer)
        if runs and runs[-1][1] == value and runs[-1][0][-1] + 1 == layer:
            runs[-1][0].append(layer)
        else:
            runs.append(([layer], value))
    return [Entry(model=model, metric=metric, value=value, layers=span(ids), **fields) for ids, value in runs]


def selector_label(name: str, params: dict[str, Any]) -> str:
    given = {k: v for k, v in sorted(params.items()) if v is not None}
    return name + (f"({','.join(f'{k}={clean(v)}' for k, v in given.items())})" if given else "")

