"""The report's routing-analysis figures, drawn only where the analysis was recorded: co-activation of one layer,
Jaccard similarity of consecutive layers' selections, capacity drop rate against capacity factor, and expert-parallel
imbalance against EP size per placement. Inputs are the tables' rows (key columns optional, so the library's own
frames, MOEProfiler.coactivation_df() / placement_df() / layers_df(), work as they are); each returns a Figure or
None."""
from __future__ import annotations

import re

import numpy as np

from .figures import by_series, colours, dress, figure, layer_axis, log2_axis, plain_log

MAX_CELLS = 128  # co-activation matrices above this many experts: the mean of each block of adjacent experts
DROP_COLUMN = re.compile(r"^drop_rate_cf(\d+)_(\d+)$")


def chosen_layer(coactivation, layer: int | None = None) -> int | None:
    """The layer the co-activation figure shows: `layer` when it was recorded, else the middle recorded layer."""
    layers = sorted({int(x) for x in coactivation["layer"]})
    if not layers:
        return None
    return layer if layer in layers else layers[len(layers) // 2]


def coactivation(rows, num_experts: int | None = None, layer: int | None = None):
    """One layer's co-activation counts (tokens that selected both a and b) as an E x E image, log colour scale
    (num_experts: E; default the highest expert index seen + 1)."""
    if rows is None or rows.empty:
        return None
    num_experts = num_experts or int(max(rows["expert_a"].max(), rows["expert_b"].max())) + 1
    from matplotlib.colors import LogNorm

    layer = chosen_layer(rows, layer)
    one = rows[rows["layer"] == layer]
    matrix = np.zeros((num_experts, num_experts))
    np.add.at(matrix, (one["expert_a"].to_numpy(int), one["expert_b"].to_numpy(int)), one["count"].to_numpy(float))
    block = -(-num_experts // MAX_CELLS)
    if block > 1:
        size = -(-num_experts // block)
        padded = np.zeros((size * block, size * block))
        padded[:num_experts, :num_experts] = matrix
        matrix = padded.reshape(size, block, size, block).mean(axis=(1, 3))
    fig, (ax,) = figure(5.2, width=6.8, right=0.9)
    positive = matrix[matrix > 0]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    image = ax.imshow(np.where(matrix > 0, matrix, np.nan), interpolation="nearest", cmap="viridis", norm=norm)
    blocks = f" (mean over {block}x{block} blocks)" if block > 1 else ""
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03, label="tokens that selected both" + blocks)
    plain_log(bar.ax.yaxis)
    ax.set_xlabel("expert b" + (f" (blocks of {block})" if block > 1 else ""))
    ax.set_ylabel("expert a")
    ax.set_title(f"co-activation, layer {layer}", fontsize=10)
    return fig


def jaccard(layers):
    """Mean per-token Jaccard similarity of a layer's selected set and the next MoE layer's, per layer, one line per
    selector; the legend gives each line's mean across layers."""
    if layers is None or "jaccard_next" not in layers or layers["jaccard_next"].isna().all():
        return None
    fig, (ax,) = figure(3.4, width=7.0)
    palette = colours(list(layers["series"]))
    recorded = layers[layers["jaccard_next"].notna()].sort_values("layer")
    for label, rows in by_series(recorded):
        values = rows["jaccard_next"].astype(float)
        ax.plot(rows["layer"], values, marker="o", ms=5 if len(rows) < 3 else 3.5, color=palette[label],
                label=f"{label}: mean {values.mean():.3f}")
    layer_axis(ax, recorded["layer"])
    ax.set_ylim(-0.03, 1.03)  # a share: the whole range, so one or two points are not blown up to fill the axis
    dress(ax, "layer (and the next MoE layer)", "Jaccard of the selected sets", "routing overlap of consecutive layers")
    return fig


def capacity_factors(columns) -> list[tuple[float, str]]:
    """(capacity factor, column) of every drop_rate_cf<a>_<b> column, in increasing factor."""
    found = [(float(f"{m.group(1)}.{m.group(2)}"), c) for c in columns if (m := DROP_COLUMN.match(c))]
    return sorted(found)


def drop_rates(layers):
    """Share of assignments a capacity-limited router would drop against the capacity factor, mean over layers
    (the band: the lowest to the highest layer), one line per selector."""
    factors = capacity_factors(layers.columns) if layers is not None else []
    if not factors or layers[[c for _, c in factors]].isna().all().all():
        return None
    fig, (ax,) = figure(3.4, width=7.0)
    palette = colours(list(layers["series"]))
    cfs = [f for f, _ in factors]
    for label, rows in by_series(layers):
        values = rows[[c for _, c in factors]].astype(float)
        if values.isna().all().all():
            continue
        ax.plot(cfs, values.mean(), marker="o", color=palette[label], label=label)
        ax.fill_between(cfs, values.min(), values.max(), color=palette[label], alpha=0.15)
    ax.set_xticks(cfs, [f"{f:g}" for f in cfs])
    dress(ax, "capacity factor", "drop rate", "capacity drops (mean over layers; band: min-max layer)")
    return fig


def _series(name: str, ep_size: int) -> str:
    """A placement's line: `balanced+r<R>` with R = the EP size (the default: one redundant expert per rank) is one
    line across EP sizes, `balanced+r(EP size)`."""
    return "balanced+r(EP size)" if name == f"balanced+r{int(ep_size)}" else name


def placement(rows):
    """Expert-parallel imbalance (busiest rank / mean rank load) against EP size, one line per placement, mean over
    layers (band: min-max layer)."""
    if rows is None or rows.empty:
        return None
    rows = rows.assign(placement=[_series(name, size) for name, size in zip(rows["placement"], rows["ep_size"])])
    fig, (ax,) = figure(3.6, width=7.0)
    palette = colours(list(rows["placement"]))
    for name, group in by_series(rows, "placement"):
        stats = group.groupby("ep_size")["imbalance"].agg(["mean", "min", "max"]).sort_index()
        ax.plot(stats.index, stats["mean"], marker="o", color=palette[name], label=name)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=palette[name], alpha=0.12)
    log2_axis(ax, rows["ep_size"])
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    dress(ax, "EP size (ranks)", "imbalance (max / mean rank load)", "expert-parallel imbalance per placement")
    return fig


CACHE_GROUPS = 4  # panels of the cache figure: the MoE layers in this many groups of consecutive layers
POLICY_STYLES = {"lru": "tab:blue", "lfu": "tab:orange", "opt": "tab:green"}


def layer_groups(layers: list[int], groups: int = CACHE_GROUPS) -> list[list[int]]:
    """The layers (sorted) cut into at most `groups` runs of consecutive layers of near-equal size."""
    layers = sorted(layers)
    return [list(part) for part in np.array_split(layers, min(groups, len(layers))) if len(part)]


def cache_curves(rows):
    """Expert-cache hit rate against capacity C (as C / E), one line per policy (LRU, LFU, Belady's OPT), one panel per
    group of consecutive MoE layers (their mean; band: min-max layer); prefill solid, decode dashed."""
    if rows is None or rows.empty:
        return None
    groups = layer_groups([int(x) for x in rows["layer"].unique()])
    fig, axes = figure(3.4, columns=len(groups))
    for ax, group in zip(axes, groups):
        part = rows[rows["layer"].isin(group)]
        for (phase, policy), lines in part.groupby(["phase", "policy"], sort=True):
            stats = lines.groupby("capacity_fraction")["hit_rate"].agg(["mean", "min", "max"]).sort_index()
            style = "-" if phase == "prefill" else "--"
            ax.plot(stats.index, stats["mean"], ls=style, color=POLICY_STYLES.get(policy), label=f"{policy} {phase}")
            ax.fill_between(stats.index, stats["min"], stats["max"], color=POLICY_STYLES.get(policy), alpha=0.1)
        ax.set_ylim(0, 1.02)
        span = f"layer {group[0]}" if len(group) == 1 else f"layers {group[0]}-{group[-1]}"
        dress(ax, "capacity C / E", "hit rate" if ax is axes[0] else None, span, legend=ax is axes[0])
    return fig
