"""The report's per-layer routing figures of one model: the expert-load heatmap, the k histogram of the dynamic
selectors, and router entropy / load CV / dead experts per layer. Each takes rows of the layers or experts table
(prefill) and returns a Figure, or None when there is nothing to draw.

Large models stay readable: the load heatmap ranks the experts by load within each layer and, above MAX_COLUMNS
experts, shows the mean of each group of adjacent ranks (256 experts -> 64 columns of 4 ranks); layer tick labels are
thinned to at most 16."""
from __future__ import annotations

import math

import numpy as np

from .figures import by_series, colours, dress, figure, layer_axis, layer_ticks, plain_log, plain_numbers

MAX_COLUMNS = 64
FLOOR = 1e-2  # the smallest relative load the log colour scale shows; below it (no token at all): the `under` colour


def _height(rows: int) -> float:
    return max(2.6, min(0.16 * rows + 1.4, 9.5))


def ranked_loads(experts) -> tuple[list[int], np.ndarray, int]:
    """(layer ids, layers x columns of load / the layer's mean load, experts ranked by load within each layer, the
    ranks grouped `group` at a time when there are more than MAX_COLUMNS experts, group)."""
    table = experts.pivot_table(index="layer", columns="expert", values="tokens", aggfunc="sum", fill_value=0)
    loads = np.sort(table.to_numpy(np.float64), axis=1)[:, ::-1]
    mean = loads.mean(axis=1, keepdims=True)
    relative = np.divide(loads, mean, out=np.zeros_like(loads), where=mean > 0)
    group = math.ceil(relative.shape[1] / MAX_COLUMNS)
    if group > 1:
        pad = group * math.ceil(relative.shape[1] / group) - relative.shape[1]
        padded = np.pad(relative, ((0, 0), (0, pad)), constant_values=np.nan)
        relative = np.nanmean(padded.reshape(len(padded), -1, group), axis=2)
    return [int(i) for i in table.index], relative, group


def load_heatmap(experts, title: str):
    """Layer x expert load of one job, experts ranked by load within each layer, on a log colour scale relative to
    the layer's mean load (1 = perfectly balanced); black: experts that got no token."""
    if experts is None or experts.empty:
        return None
    import matplotlib
    from matplotlib.colors import LogNorm

    layers, relative, group = ranked_loads(experts)
    fig, (ax,) = figure(_height(len(layers)), width=9.0, right=1.0)
    cmap = matplotlib.colormaps["viridis"].with_extremes(under="black")
    # a load below the scale's floor shows at the floor; only an expert with no token at all is black
    shown = np.where(relative > 0, np.maximum(relative, FLOOR), FLOOR / 2)
    top = max(float(np.nanmax(relative)), 1.5)
    image = ax.imshow(shown, aspect="auto", interpolation="nearest", cmap=cmap, norm=LogNorm(vmin=FLOOR, vmax=top))
    bar = fig.colorbar(image, ax=ax, extend="min", fraction=0.05, pad=0.02, label="load / layer mean")
    plain_log(bar.ax.yaxis)
    layer_ticks(ax, layers)
    columns = relative.shape[1]
    step = max(1, columns // 8)
    ax.set_xticks(range(0, columns, step), [str(c * group + 1) for c in range(0, columns, step)])
    ax.set_xlabel("experts ranked by load within the layer (1 = busiest)"
                  + (f"; each column the mean of {group} ranks" if group > 1 else ""))
    ax.set_ylabel("layer")
    ax.set_title(title)
    return fig


def k_histograms(layers_by_series: dict[str, object]):
    """Per dynamic selector (one job each): the share of tokens at each k, per layer (rows: layers, columns: k)."""
    panels = {label: rows for label, rows in layers_by_series.items()
              if rows is not None and len(rows) and rows["k_hist"].notna().any()}
    if not panels:
        return None
    panels = dict(list(panels.items())[:4])
    rows_max = max(len(rows) for rows in panels.values())
    fig, axes = figure(_height(rows_max), len(panels), right=0.9)
    for ax, (label, rows) in zip(axes, panels.items()):
        rows = rows.sort_values("layer")
        hists = [np.asarray(h if h is not None else [], dtype=np.float64) for h in rows["k_hist"]]
        width = max(len(h) for h in hists)
        counts = np.array([np.pad(h, (0, width - len(h))) for h in hists])
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(share, aspect="auto", interpolation="nearest", cmap="magma_r", vmin=0, vmax=1)
        if share.size <= 120:
            for (r, c), value in np.ndenumerate(share):
                if value >= 0.005:
                    ax.text(c, r, f"{value:.0%}", ha="center", va="center", fontsize=8,
                            color="white" if value > 0.5 else "black")
        layer_ticks(ax, [int(x) for x in rows["layer"]])
        ax.set_xticks(range(width), [str(k) for k in range(width)])
        ax.set_xlabel("k (experts per token)")
        ax.set_ylabel("layer")
        ax.set_title(f"{label}, k_max={int(rows['top_k'].iloc[0])}", fontsize=10)
    fig.colorbar(image, ax=axes, fraction=0.05, pad=0.02, label="share of the layer's tokens")
    return fig


LAYER_METRICS = (("router_entropy", "router entropy H(p)/ln E"), ("load_cv", "load CV (std/mean)"),
                 ("dead_experts", "dead experts (no token)"))


def layer_metrics(layers, k: int | None):
    """Router entropy, load CV and dead experts per layer, one line per selector (its job at k)."""
    if layers is None or layers.empty:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, axes = figure(3.4, len(LAYER_METRICS))
    palette = colours(list(layers["series"]))
    for ax, (metric, title) in zip(axes, LAYER_METRICS):
        for label, rows in by_series(layers.sort_values("layer")):
            ax.plot(rows["layer"], rows[metric].astype(float), marker="o", ms=5 if len(rows) < 3 else 3.5, lw=1.2,
                    color=palette[label], label=label)
        layer_axis(ax, layers["layer"])
        if metric == "dead_experts":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(-0.3, max(1.0, float(layers[metric].max())) + 0.3)
        plain_numbers(ax)
        dress(ax, "layer", None, title, legend=False)
    axes[0].legend(fontsize=8, title=f"k={k}" if k is not None else None, title_fontsize=8)
    return fig
