"""What every report figure shares: a matplotlib Figure on the Agg canvas (no pyplot, no display), its PNG, the
series label of a job (its selector and the parameters that vary), the FLOPs axis, the Pareto front, the job a
per-layer figure shows. matplotlib is imported here, lazily: a sweep that never writes a report never loads it."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

DPI = 120  # tick labels ~14 px where the page shows a 12-inch figure 1,200 px wide (80 dpi gave ~6 px at 700 px)
WIDTH = 12.0  # inches: 1,440 px at DPI
from ..profiler.selector_registry import OWN_ROUTING


def figure(height: float, columns: int = 1, width: float | None = None, left: float = 1.0, right: float = 0.2,
           bottom: float = 0.6, top: float = 0.35, gap: float = 0.95):
    """A Figure with `columns` axes side by side (Figure(), not pyplot: nothing global, nothing kept alive); its
    width grows with the columns up to WIDTH. Margins and the gap between axes are in inches, fixed: a layout
    engine (constrained, tight) measures every text twice and doubled the report's time."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    width = width or min(WIDTH, 1.6 + 4.4 * columns)
    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(1, columns, squeeze=False)[0]
    panel = (width - left - right - gap * (columns - 1)) / columns
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap / panel)
    return fig, list(axes)


def plain_numbers(ax, flops: str = "") -> None:
    """Tick labels as the numbers themselves: no `+5.586` offset above a loss axis, no 1e5 multiplier; the axis named
    by `flops` ("x") in engineering units (50k, 1.2M, 3G)."""
    from matplotlib.ticker import EngFormatter

    for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        if name == flops:
            axis.set_major_formatter(EngFormatter(sep=""))
            continue
        if axis.get_scale() in ("log", "symlog"):
            plain_log(axis)
            continue
        formatter = axis.get_major_formatter()
        if hasattr(formatter, "set_useOffset"):
            formatter.set_useOffset(False)
            formatter.set_scientific(False)


def save(fig, path: Path) -> Path:
    """The PNG, written atomically (a temp file unique to this writer beside it, then renamed)."""
    from ..files import write_atomic

    return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png", metadata={"Software": None}),
                        "the figure")


def selector_params(raw: Any) -> dict[str, Any]:
    try:
        params = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        params = {}
    return params if isinstance(params, dict) else {}


def series_labels(runs) -> list[str]:
    """Each job's series: its selector, with the parameters (k_max aside: that is k) that differ between the jobs of
    that selector's finished jobs, e.g. `cumsum(threshold=0.8)`; `router` = the model's own routing. (A job that failed
    early has only the parameters it was given: it is not compared.)"""
    params = [{k: v for k, v in selector_params(raw).items() if k != "k_max"} for raw in runs["selector_params"]]
    names = [str(s) if isinstance(s, str) else OWN_ROUTING for s in runs["selector"]]
    finished = list(runs["status"].isin(["ok", "skipped"]))
    labels = []
    for name, own in zip(names, params):
        if name == OWN_ROUTING:
            labels.append(OWN_ROUTING)
            continue
        same = [p for n, p, done in zip(names, params, finished) if n == name and done]
        varying = sorted(k for k in {k for p in same for k in p} if len({json.dumps(p.get(k)) for p in same}) > 1)
        labels.append(name + (f"({','.join(f'{k}={own.get(k)}' for k in varying)})" if varying else ""))
    return labels


FLOPS_COLUMNS = (("flops_per_token_routed", "routed: the recorded per-token k"),
                 ("flops_per_token_measured", "measured"), ("flops_per_token_analytic", "analytic, at k"))


def flops_column(runs) -> tuple[str, str]:
    """The MoE FLOPs/token column the frontier uses: routed (follows a dynamic k over every token) when every job
    has it, else measured, else analytic."""
    for column, meaning in FLOPS_COLUMNS:
        if column in runs and len(runs) and runs[column].notna().all():
            return column, meaning
    return FLOPS_COLUMNS[-1]


def pareto(x, y, low=None, high=None) -> list[bool]:
    """True where a point is better than every cheaper point (lower x) beyond the uncertainty, its interval's upper end
    `high` below the other's lower end `low`, and no point of the same x is better beyond it. Without intervals (None,
    or NaN ends) the values themselves: the usual front (no other point at least as good in both and better in one;
    exact ties both stay)."""
    ys = [float(b) for b in y]

    def ends(values) -> list[float]:
        return ys if values is None else [float(e) if math.isfinite(float(e)) else v for e, v in zip(values, ys)]

    xs, lows, highs = [float(a) for a in x], ends(low), ends(high)
    kept = [j for j, (c, d) in enumerate(zip(xs, ys)) if math.isfinite(c) and math.isfinite(d)]
    return [i in kept and all(highs[i] < lows[j] if xs[j] < xs[i] else not highs[j] < lows[i]
                              for j in kept if j != i and xs[j] <= xs[i]) for i in range(len(xs))]


def ok_runs(runs):
    return runs[runs["status"].isin(["ok", "skipped"])]


def reference_job(runs):
    """The job a per-layer figure of one model shows: its own routing at its own top-k, else its own routing at the
    largest k, else the first ok job; None when no job is ok."""
    ok = ok_runs(runs)
    if ok.empty:
        return None
    own = ok[ok["selector"].fillna(OWN_ROUTING) == OWN_ROUTING]
    at_default = own[own["topk"] == own["default_topk"]]
    if len(at_default):
        return at_default.iloc[0]
    if len(own):
        return own.sort_values("topk").iloc[-1]
    return ok.iloc[0]


def comparison_k(runs) -> int | None:
    """The k at which per-layer figures compare the selectors: the model's own top-k when it was swept, else the
    largest k swept."""
    ok = ok_runs(runs)
    ks = sorted({int(k) for k in ok["topk"].dropna()})
    if not ks:
        return None
    defaults = {int(k) for k in ok["default_topk"].dropna()}
    common = [k for k in ks if k in defaults]
    return common[0] if common else ks[-1]


def layer_ticks(ax, layers, axis: str = "y", most: int = 16) -> None:
    """Tick labels of the layer ids, at most `most` of them."""
    step = max(1, math.ceil(len(layers) / most))
    positions = list(range(0, len(layers), step))
    labels = [str(layers[i]) for i in positions]
    if axis == "y":
        ax.set_yticks(positions, labels)
    else:
        ax.set_xticks(positions, labels)


def series_order(labels) -> list[str]:
    """The series in the order every legend lists them: own routing first, then by name (never the row order, which
    differs between models and sweeps)."""
    return sorted(set(labels), key=lambda s: (s != OWN_ROUTING, s))


def by_series(frame, column: str = "series"):
    """(label, rows) per series, in series_order: what each figure's lines are drawn from, so legends agree."""
    groups = dict(list(frame.groupby(column, sort=False)))
    return [(label, groups[label]) for label in series_order(groups)]


def colours(labels: list[str]) -> dict[str, Any]:
    """One colour per series label, stable within a figure set (tab10, own routing first)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(series_order(labels))}


def layer_axis(ax, layers, most: int = 16) -> None:
    """An x axis of MoE layer ids: a tick at each id (at most `most`), half a layer of room either side, so one or two
    layers read as layers and not as a span of -0.045..0.045."""
    ids = sorted({int(x) for x in layers})
    if not ids:
        return
    step = max(1, math.ceil(len(ids) / most))
    ax.set_xticks(ids[::step], [str(i) for i in ids[::step]])
    ax.set_xlim(ids[0] - 0.5, ids[-1] + 0.5)


def plain_log(axis) -> None:
    """A log axis (or a log colour bar's) labelled `1e-06`, `0.1`, `10`: matplotlib's default 10^x labels are
    mathtext, whose parser alone took a third of the report's time."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def dress(ax, xlabel: str, ylabel: str | None, title: str, legend: bool = True) -> None:
    """Axis labels, a title, a light grid and (when there are labelled lines) the legend."""
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)


def log2_axis(ax, values) -> None:
    """A base-2 log x axis ticked at exactly the values given (k, EP sizes)."""
    ticks = sorted({int(v) for v in values})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
