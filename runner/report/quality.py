"""The report's cost/quality figures of one model: the FLOPs/loss and FLOPs/KL frontier, speed against k, and task
accuracy against FLOPs. Each takes the model's runs rows (with a `series` column, figures.series_labels) and returns
a Figure, or None when there is nothing to draw."""
from __future__ import annotations

from .figures import OWN_ROUTING, by_series, colours, dress, figure, flops_column, log2_axis, ok_runs, pareto, plain_numbers


def _label_points(ax, xs, ys, ks) -> None:
    for x, y, k in zip(xs, ys, ks):
        ax.annotate(f"k={int(k)}" if k == k else "", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)


def _interval(data, metric):
    """The metric's confidence interval columns (low, high), or (None, None) where no job has them."""
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    if low in data and high in data and data[low].notna().any():
        return data[low].astype(float), data[high].astype(float)
    return None, None


def frontier(runs):
    """MoE FLOPs/token against loss, and against KL to the model's own routing: one series per selector, each point
    labelled by k, with its 95 % interval where recorded; ringed: points whose loss / KL is below every cheaper point's
    beyond both intervals (figures.pareto)."""
    ok = with_reference_kl(ok_runs(runs))
    ok = ok[ok["loss"].notna()]
    if ok.empty:
        return None
    column, meaning = flops_column(ok)
    has_kl = ok["kl"].notna().any()
    fig, axes = figure(4.6, 2 if has_kl else 1)
    palette = colours(list(ok["series"]))
    panels = [("loss", "loss (mean NLL)")] + ([("kl", "KL to the model's own routing")] if has_kl else [])
    for ax, (metric, title) in zip(axes, panels):
        data = ok[ok[metric].notna()].sort_values(column)
        if metric == "kl":
            kl_axis(ax, data["kl"])
        low, high = _interval(data, metric)
        for label, group in by_series(data):
            ax.plot(group[column], group[metric], marker="o", ms=5, lw=1.2, color=palette[label], label=label)
            if low is not None:  # the 95 % bootstrap interval over documents
                ax.errorbar(group[column], group[metric], yerr=[(group[metric] - low[group.index]).clip(lower=0),
                                                                (high[group.index] - group[metric]).clip(lower=0)],
                            fmt="none", ecolor=palette[label], elinewidth=1, capsize=2)
            _label_points(ax, group[column], group[metric], group["topk"])
        ax.margins(x=0.08, y=0.08)  # room for the k labels of the outermost points
        if len(data) > 1:  # one job: nothing to be optimal against
            front = data[pareto(data[column], data[metric], low, high)]
            ax.scatter(front[column], front[metric], s=130, facecolors="none", edgecolors="black", linewidths=1.2,
                       label="Pareto-optimal", zorder=3)
        dress(ax, f"MoE FLOPs/token ({meaning})", title, f"cost vs {metric}", legend=ax is axes[0])
        plain_numbers(ax, flops="x")
    return fig


def with_reference_kl(runs):
    """The runs with KL 0 for the own-routing job at the model's own top-k: it is the reference every KL is taken
    against (its kl is not recorded, it would compare the model with itself), so the frontier draws it at 0 instead of
    jumping over it."""
    if not {"selector", "topk", "default_topk", "kl", "loss"} <= set(runs.columns):
        return runs
    runs = runs.copy()
    reference = ((runs["selector"].fillna(OWN_ROUTING) == OWN_ROUTING) & (runs["topk"] == runs["default_topk"])
                 & runs["kl"].isna() & runs["loss"].notna())
    if reference.any() and runs.loc[~reference, "kl"].notna().any():
        runs["kl"] = runs["kl"].astype(float)
        runs.loc[reference, "kl"] = 0.0
    return runs


def kl_axis(ax, kl) -> None:
    """A symlog KL axis (0, the reference, is on it): linear below the smallest positive KL's decade, a labelled tick
    at 0 and at every decade up to the largest; 2x and 5x ticks too when the values span two decades or fewer, so a
    few values between 1e-6 and 1e-5 still have labels to read them by."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    positive = [float(v) for v in kl if v == v and v > 0]
    if not positive:
        return
    low, high = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
    ax.set_yscale("symlog", linthresh=10.0 ** low, linscale=0.5)
    subs = (1, 2, 5) if high - low <= 2 else (1,)
    ticks = [0.0] + [s * 10.0 ** e for e in range(low, high + 1) for s in subs if s * 10.0 ** e <= 10.0 ** high]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_ylim(-0.1 * 10.0 ** low, 10.0 ** high * 1.15)


SPEED = (("tokens_per_s", "tokens/s (prefill)"), ("ttft_ms", "TTFT ms"), ("tpot_ms", "TPOT ms"))


def speed(runs):
    """tokens/s against k, one line per selector; TTFT and TPOT against k where decode was timed."""
    ok = ok_runs(runs)
    panels = [(c, t) for c, t in SPEED if c in ok and ok[c].notna().any()]
    if not panels:
        return None
    fig, axes = figure(3.6, len(panels))
    palette = colours(list(ok["series"]))
    for ax, (metric, title) in zip(axes, panels):
        data = ok[ok[metric].notna()].sort_values("topk")
        for label, group in by_series(data):
            ax.plot(group["topk"], group[metric], marker="o", ms=5, color=palette[label], label=label)
        log2_axis(ax, data["topk"].dropna())
        dress(ax, "k (k_max for a dynamic selector)", None, title, legend=ax is axes[0])
        plain_numbers(ax)
    return fig


def tasks(runs, task_rows):
    """Task accuracy (each task and metric a panel) against MoE FLOPs/token, one series per selector, labelled by k.
    `task_rows`: the tasks table's rows of these runs (run_id, task, metric, value)."""
    if task_rows is None or task_rows.empty:
        return None
    ok = ok_runs(runs)
    column, meaning = flops_column(ok)
    joined = ["series", "topk", column]  # the task rows carry their job's key columns (topk) too: the runs' win
    data = task_rows.drop(columns=[c for c in joined if c in task_rows]).merge(ok[["run_id", *joined]], on="run_id")
    data = data[data["value"].notna()]
    panels = list(data.groupby(["task", "metric"], sort=True))[:4]
    if not panels:
        return None
    fig, axes = figure(3.8, len(panels))
    palette = colours(list(ok["series"]))
    for ax, ((task, metric), group) in zip(axes, panels):
        for label, points in by_series(group.sort_values(column)):
            ax.plot(points[column], points["value"], marker="o", ms=5, color=palette[label], label=label)
            _label_points(ax, points[column], points["value"], points["topk"])
        dress(ax, f"MoE FLOPs/token ({meaning})", None, f"{task}: {metric}", legend=ax is axes[0])
        plain_numbers(ax, flops="x")
    return fig
