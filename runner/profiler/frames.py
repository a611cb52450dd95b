"""What the profiler hands back: pandas frames (one row per phase and layer, or per phase, layer and expert), peak
memory, and the text reports. Metric definitions are in metrics.py; this file only lays them out."""
from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from handlers.base import DIMENSIONS

from .metrics import expert_metrics, jaccard_uniform, layer_metrics, vocab_columns
from .scan import MoELayer, read_live_top_k

if TYPE_CHECKING:
    from .moe_profiler import MOEProfiler

EXPERT_COLUMNS = ["phase", "layer", "expert", "tokens", "load_fraction", "gate_mass", "mean_prob"]


def recorded_phases(p: "MOEProfiler") -> dict[str, dict[str, np.ndarray] | None]:
    """The phases that recorded anything, each with its accumulators (None without a recorder), from one read
    of the device; with nothing recorded at all, the current phase."""
    measured = p.cost.measured
    if p.recorder is None:
        seen = [phase for phase in measured if any(measured[phase])]
        return dict.fromkeys(seen or [p.current_phase])
    phases = p.recorder.read_phases()
    seen = {phase: values for phase, values in phases.items()
            if values["k_hist"].any() or any(measured.get(phase, ()))}
    return seen or {p.current_phase: phases.get(p.current_phase)}


# per-layer means that turn NaN when any router score of the layer was NaN or inf (fp32 sums on the device, read with
# the frame: no extra sync)
ROUTER_MEANS = ("top1_prob", "selected_mass", "router_entropy")
NONFINITE = "non-finite router scores (NaN or inf)"


def nonfinite_layers(layers: pd.DataFrame) -> list[int]:
    """The layers (ids) whose router scores were NaN or inf for some token: top-k over NaN picks experts in tie
    order, so their load, drop and dead-expert columns would look like real (extreme) imbalance."""
    columns = [c for c in ROUTER_MEANS if c in layers]
    if not columns or "tokens" not in layers or layers.empty:
        return []
    seen = layers[layers["tokens"].fillna(0).astype(float) > 0]
    bad = seen[~np.isfinite(seen[columns].astype(float)).all(axis=1)]
    return sorted({int(v) for v in bad["layer"]})


def layers_frame(p: "MOEProfiler") -> pd.DataFrame:
    rows = []
    for phase, snapshot in recorded_phases(p).items():
        measured = p.cost.measured_in(phase)
        for layer in p.layers:
            rows.append(_layer_row(p, layer, phase, snapshot, measured))
    frame = pd.DataFrame(rows)
    bad = nonfinite_layers(frame)
    if bad:
        warnings.warn(f"MoE layer(s) {', '.join(map(str, bad))}: {NONFINITE}; their routing columns (load, drops, "
                      "dead experts) are top-k's tie order on NaN, not real routing", stacklevel=3)
    return frame


def _layer_row(p: "MOEProfiler", layer: MoELayer, phase: str, snapshot: dict[str, np.ndarray] | None,
               measured: list[int] | None) -> dict[str, Any]:
    pos = layer.position
    row: dict[str, Any] = dict(phase=phase, layer=layer.layer_id, position=pos, module=layer.name,
                               block_class=type(layer.block).__name__, device=str(p.devices[pos]), top_k=read_live_top_k(layer), tokens=0)
    if snapshot is not None:
        row.update(layer_metrics(snapshot, pos, layer.num_experts, layer.router_width, row["top_k"]))
        row.update(vocab_columns(snapshot, pos, layer.num_experts, p.recorder.analyses.min_token_count))
        if "jaccard_next" in row:
            row["jaccard_random"] = _jaccard_random(p, layer, snapshot)
        row.update(layer.cost.flops(row["tokens"], layer.computed_pairs(row["tokens"], row["assignments"], row["top_k"])))
        row["flops"] = row["flops_router"] + row["flops_experts"] + row["flops_shared"]
        row["flops_per_token"] = row["flops"] / row["tokens"] if row["tokens"] else float("nan")
    row["flops_measured"] = measured[pos] if measured is not None else None
    if p.timer is not None:
        row.update(p.timer.summary(pos, phase))
    row.update(exact=layer.handler.exact, note=layer.handler.note,
               dims_warning="; ".join(layer.warnings) or None)  # a config or override that contradicts the weights
    mismatch = p.cost.mismatch(phase, layer)
    if mismatch is not None:  # marked exact, measured otherwise: never stored as exact
        row.update(exact=False, flops_warning=mismatch)
    for dim in DIMENSIONS:
        resolved = layer.dims[dim]
        column = "default_top_k" if dim == "top_k" else dim  # `top_k` is the live value that ran
        row[column] = resolved.value
        row[f"{column}_source"] = resolved.source
        row[f"{column}_detail"] = resolved.detail
    return row


def _jaccard_random(p: "MOEProfiler", layer: MoELayer, snapshot: dict[str, np.ndarray]) -> float:
    """`jaccard_random`: the Jaccard uniform routing gives at this layer's and the next one's k histograms (NaN on
    the last MoE layer, and where the two layers have different numbers of experts)."""
    pos = layer.position
    if pos + 1 >= len(p.layers) or p.layers[pos + 1].num_experts != layer.num_experts:
        return float("nan")
    return jaccard_uniform(snapshot["k_hist"][pos], snapshot["k_hist"][pos + 1], layer.num_experts)


def experts_frame(p: "MOEProfiler") -> pd.DataFrame:
    if p.recorder is None:
        return pd.DataFrame(columns=EXPERT_COLUMNS)
    frames = []
    for phase, snapshot in recorded_phases(p).items():
        for layer in p.layers:
            frames.append(pd.DataFrame(dict(phase=phase, layer=layer.layer_id, expert=np.arange(layer.num_experts),
                                            **expert_metrics(snapshot, layer.position, layer.num_experts))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EXPERT_COLUMNS)


# -- memory -------------------------------------------------------------------------------------------------------
def cuda_devices(model: torch.nn.Module) -> list[torch.device]:
    """The GPUs holding the model's parameters, and those a device map runs offloaded modules on."""
    devices = {param.device for param in model.parameters() if param.device.type == "cuda"}
    mapped = (getattr(model, "hf_device_map", None) or {}).values()
    devices |= {torch.device("cuda", d) if isinstance(d, int) else torch.device(d) for d in mapped
                if isinstance(d, int) or str(d).startswith("cuda")}
    return sorted(devices, key=lambda d: d.index or 0)


def memory_frame(model: torch.nn.Module) -> pd.DataFrame:
    rows = [dict(device=str(d), name=torch.cuda.get_device_name(d),
                 peak_allocated_bytes=torch.cuda.max_memory_allocated(d),
                 peak_reserved_bytes=torch.cuda.max_memory_reserved(d),
                 total_bytes=torch.cuda.get_device_properties(d).total_memory) for d in cuda_devices(model)]
    return pd.DataFrame(rows, columns=["device", "name", "peak_allocated_bytes", "peak_reserved_bytes", "total_bytes"])


# -- reports ------------------------------------------------------------------------------------------------------
def scan_report(p: "MOEProfiler") -> str:
    handler = p.handler
    name = "generic (no handler for this model_type)" if handler.model_types == ("<generic>",) else handler.model_types[0]
    lines = [f"MoE scan: {type(p.model).__name__} (model_type={p.model_type!r}, handler: {name}) — "
             f"{len(p.layers)} MoE layers"]
    groups: list[tuple[tuple, list[MoELayer]]] = []
    for layer in p.layers:
        key = (type(layer.block).__name__, tuple((d, str(r)) for d, r in layer.dims.items()), layer.cost,
               tuple(n.replace(layer.name, "") for n, _ in layer.shared), tuple(layer.warnings))
        if groups and groups[-1][0] == key:
            groups[-1][1].append(layer)
        else:
            groups.append((key, [layer]))
    for _, members in groups:
        first = members[0]
        ids = [m.layer_id for m in members]
        span = f"{ids[0]}" if len(ids) == 1 else (f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ", ".join(map(str, ids)))
        pattern = re.sub(rf"(^|\.){first.layer_id}(?=\.|$)", r"\1{i}", first.name, count=1) if len(members) > 1 else first.name
        lines.append(f"Layers {span} ({len(members)} x {type(first.block).__name__} @ {pattern})")
        router = type(first.router).__name__ if first.router is not None else "none"
        lines.append(f"  Router: {router}, {handler.scoring} scores, top-k at {first.top_k_attr}, width {first.router_width}")
        for dim in DIMENSIONS:
            label = "Top-k" if dim == "top_k" else dim.replace("_", " ").capitalize()
            lines.append(f"  {label}: {first.dims[dim]}")
        k = read_live_top_k(first) or first.dims["top_k"].value
        cost = first.cost
        lines.append(f"  FLOPs/token: router {cost.router:,} + k x {cost.per_expert:,} + shared {cost.shared:,} "
                     f"= {int(cost.per_token(k)):,} at k={k}")
        for shared_name, _ in first.shared:
            lines.append(f"  Shared: {shared_name}")
        for message in first.warnings:
            lines.append(f"  WARNING: {message}")
    if handler.note:
        lines.append(f"Note: {handler.note}")
    if not handler.exact:
        lines.append("Note: FLOPs for this architecture are NOT exact (see note); frames carry exact=False")
    return "\n".join(lines)


def report(p: "MOEProfiler") -> str:
    df = layers_frame(p)
    lines = [scan_report(p), ""]
    cols = [c for c in ("layer", "tokens", "k_mean", "flops_per_token", "flops", "flops_measured", "router_entropy",
                        "top1_prob", "load_cv", "dead_experts", "latency_ms_p50") if c in df.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        lines.append(df[cols].to_string(index=False))
    if "flops" in df and df["tokens"].sum():
        lines.append(f"Total MoE FLOPs: {int(df['flops'].sum()):,} over {int(df['tokens'].max()):,} tokens "
                     f"({df['flops'].sum() / df['tokens'].max():,.0f} per token)")
    return "\n".join(lines)


# -- analyses -----------------------------------------------------------------------------------------------------
COACTIVATION_COLUMNS = ["phase", "layer", "expert_a", "expert_b", "count", "count_random", "lift"]
PLACEMENT_COLUMNS = ["phase", "layer", "ep_size", "placement", "fitted_on", "imbalance", "balancedness", "busiest_rank_tokens",
                     "expert_ranks"]


def coactivation_frame(p: "MOEProfiler") -> pd.DataFrame:
    """(phase, layer, expert_a, expert_b, count): the nonzero off-diagonal entries of each layer's co-activation
    matrix (metrics.md); both (a, b) and (b, a) are listed."""
    from .attach import ProfilerError

    if p.recorder is None or not p.recorder.analyses.coactivation:
        raise ProfilerError("co-activation is not recorded: MOEProfiler(model, analyses=Analyses(coactivation=True)) "
                            "or analyses=('capacity', 'coactivation')")
    frames = []
    for phase, snapshot in recorded_phases(p).items():
        for layer in p.layers:
            E = layer.num_experts
            matrix = snapshot["coactivation"][layer.position][:E, :E].copy()
            np.fill_diagonal(matrix, 0)
            a, b = np.nonzero(matrix)
            # uniform routing at the same per-token k spreads the same pairs, sum_t k_t (k_t - 1), evenly
            expected = matrix.sum() / (E * (E - 1)) if E > 1 else float("nan")
            count = matrix[a, b].astype(np.int64)
            frames.append(pd.DataFrame(dict(phase=phase, layer=layer.layer_id, expert_a=a, expert_b=b, count=count,
                                            count_random=float(expected), lift=count / expected)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COACTIVATION_COLUMNS)


TRANSITION_COLUMNS = ["phase", "layer", "next_layer", "expert_a", "expert_b", "count", "count_random", "lift"]


def transitions_frame(p: "MOEProfiler") -> pd.DataFrame:
    """(phase, layer, next_layer, expert_a, expert_b, count): tokens that selected a at `layer` and b at the next MoE
    layer, nonzero entries only (metrics.md)."""
    from .attach import ProfilerError

    if p.recorder is None or not p.recorder.analyses.transitions:
        raise ProfilerError("transitions are not recorded: MOEProfiler(model, analyses=Analyses(transitions=True)) "
                            "or analyses=('capacity', 'transitions')")
    frames = []
    for phase, snapshot in recorded_phases(p).items():
        for layer, following in zip(p.layers, p.layers[1:]):
            matrix = snapshot["transitions"][layer.position][: layer.num_experts, : following.num_experts]
            a, b = np.nonzero(matrix)
            # uniform routing at the same per-token k: sum_t k_t^l k_t^(l+1) pairs, spread evenly over E^l E^(l+1)
            expected = matrix.sum() / (layer.num_experts * following.num_experts)
            count = matrix[a, b].astype(np.int64)
            frames.append(pd.DataFrame(dict(phase=phase, layer=layer.layer_id, next_layer=following.layer_id,
                                            expert_a=a, expert_b=b, count=count, count_random=float(expected),
                                            lift=count / expected)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TRANSITION_COLUMNS)


def placement_frame(p: "MOEProfiler", ep_sizes: Any = None, redundant: Any = None, fit_on: Any = None,
                    fitted_on: str = "other") -> pd.DataFrame:
    """Expert-parallel placements of each (phase, layer)'s measured loads (placement.py): one row per (phase, layer,
    ep_size, placement, fitted_on). ep_sizes: default the candidates dividing E; redundant: numbers of redundant
    replicas for `balanced+r<R>` (default: one per rank, R = ep_size). fit_on: other loads (layer, expert, tokens)
    to fit the balanced placements on, scored on these loads as well, labelled `fitted_on`."""
    from . import placement

    experts = experts_frame(p)
    other = None if fit_on is None else {layer: g.sort_values("expert")["tokens"].to_numpy(np.float64)
                                         for layer, g in fit_on.groupby("layer")}
    rows, warned = [], set()
    for (phase, layer_id), group in experts.groupby(["phase", "layer"], sort=False):
        loads = group["tokens"].to_numpy(np.float64)
        if other is not None and (layer_id not in other or len(other[layer_id]) != len(loads)):
            raise ValueError(f"the loads to fit placements on have no layer {layer_id} with {len(loads)} experts: "
                             "fit on a run of the same model")
        sizes = placement.ep_sizes(len(loads)) if ep_sizes is None else [n for n in ep_sizes if len(loads) % n == 0]
        if ep_sizes is not None and len(sizes) < len(ep_sizes) and len(loads) not in warned:
            warned.add(len(loads))
            warnings.warn(f"EP sizes {[n for n in ep_sizes if len(loads) % n]} do not divide the {len(loads)} experts "
                          "of a layer: no placement rows for them", stacklevel=3)
        for size in sizes:
            extra = (size,) if redundant is None else tuple(redundant)
            fits = [("self", placement.placements(loads, size, extra))]
            if other is not None:
                fits.append((fitted_on, placement.placements(other[layer_id], size, extra)[2:]))  # the balanced ones
            for label, placed_all in fits:
                for placed in placed_all:
                    rows.append(dict(phase=phase, layer=layer_id, ep_size=size, placement=placed.name, fitted_on=label,
                                     **placed.score(loads), expert_ranks=[list(r) for r in placed.expert_ranks]))
    return pd.DataFrame(rows, columns=PLACEMENT_COLUMNS)
