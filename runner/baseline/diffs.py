"""Differences between a baseline and the entries now, and the table `check` prints."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .entries import Entry, Value


@dataclass(frozen=True)
class Diff:
    kind: str  # changed | renamed | missing | extra | tolerance
    key: str  # the baseline's key (the new one for `extra`)
    baseline: Value | None
    now: Value | None
    new_key: str | None = None  # renamed: the key it has now

    @property
    def label(self) -> str:
        if self.kind == "renamed":
            return f"renamed: {self.key} -> {self.new_key}"
        return f"{self.kind}: {self.key}"


KINDS = ("changed", "renamed", "missing", "extra", "tolerance")


def matches(base: Entry, now: Entry) -> bool:
    a, b = base.value, now.value
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if base.tolerance is None:
        return a == b
    return abs(b - a) <= base.tolerance * abs(a)


def compare(baseline: Sequence[Entry], now: Sequence[Entry], tolerances: bool = True) -> list[Diff]:
    """Differences, compared with the baseline's tolerances; `tolerances`: also report a tolerance that differs."""
    old = {e.key: e for e in baseline}
    new = {e.key: e for e in now}
    diffs: list[Diff] = []
    for key in old.keys() & new.keys():
        b, n = old[key], new[key]
        if not matches(b, n):
            diffs.append(Diff("changed", key, b.value, n.value))
        elif tolerances and b.tolerance != n.tolerance:
            diffs.append(Diff("tolerance", key, _tol(b.tolerance), _tol(n.tolerance)))
    missing = sorted((old[k] for k in old.keys() - new.keys()), key=Entry.sort_key)
    extra = sorted((new[k] for k in new.keys() - old.keys()), key=Entry.sort_key)
    used: set[str] = set()
    for b in missing:
        partner = next((n for n in extra if n.key not in used and similar(b, n) and matches(b, n)), None)
        if partner is None:
            diffs.append(Diff("missing", b.key, b.value, None))
        else:
            used.add(partner.key)
            diffs.append(Diff("renamed", b.key, b.value, partner.value, partner.key))
    diffs += [Diff("extra", n.key, None, n.value) for n in extra if n.key not in used]
    order = {e.key: e.sort_key() for e in [*baseline, *now]}
    return sorted(diffs, key=lambda d: (KINDS.index(d.kind), order[d.key]))


def similar(a: Entry, b: Entry) -> bool:
    """The same metric, and exactly one of model, k, selector, dataset, layer range differs."""
    return a.metric == b.metric and sum(x != y for x, y in zip(a.identity, b.identity)) == 1


def _tol(value: float | None) -> str:
    return "exact" if value is None else f"rtol {value!r}"


def _show(value: Value | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return repr(value)
    return value


def _delta(diff: Diff) -> str:
    a, b = diff.baseline, diff.now
    if diff.kind == "tolerance" or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return ""
    if a == 0:
        return "0%" if b == 0 else "inf"
    return f"{(b - a) / abs(a) * 100:+.3g}%"


def table(diffs: Sequence[Diff]) -> str:
    rows = [("entry", "baseline", "now", "delta %")] + [(d.label, _show(d.baseline), _show(d.now), _delta(d))
                                                        for d in diffs]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}".rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def counts(diffs: Sequence[Diff]) -> str:
    return ", ".join(f"{sum(d.kind == kind for d in diffs)} {kind}" for kind in KINDS
                     if any(d.kind == kind for d in diffs))

