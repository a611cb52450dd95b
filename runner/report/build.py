"""Build a report: the figures of each model of a Selection (runner/results/select.py), their PNGs and report.html
beside them. Optional tables (co-activation, placement, tasks; the layers' Jaccard and drop-rate columns) are drawn
where they hold rows and skipped otherwise."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from ..files import user_directory, write_atomic
from . import analysis_figures as analyses, page, quality, routing_figures as routing
from ..profiler.phases import PREFILL
from .figures import OWN_ROUTING, comparison_k, ok_runs, reference_job, save, series_labels



def _prefill(frame):
    if frame is None:
        return None
    if "phase" in frame:
        frame = frame[frame["phase"] == PREFILL]
    return frame if len(frame) else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)[:60] or "model"


def _describe(job) -> str:
    return f"job {job['job_num']} ({job['series']}, k={job['topk']})" if job is not None else ""


def _of(frame, run_ids) -> Any:
    if frame is None:
        return None
    rows = frame[frame["run_id"].isin(list(run_ids))]
    return rows if len(rows) else None


class ModelFigures:
    """The figures of one model; `add` writes one PNG and keeps its caption."""

    def __init__(self, model: str, out: Path) -> None:
        self.section = page.Section(model)
        self.out = out

    def add(self, name: str, fig, title: str, caption: str) -> None:
        if fig is None:
            return
        file = f"{_slug(self.section.model)}-{name}.png"
        save(fig, self.out / file)
        self.section.figures.append(page.Figure(file, title, caption))


def model_section(model: str, runs, tables: dict[str, Any], out: Path, layer: int | None) -> page.Section:
    figures = ModelFigures(model, out)
    ok = ok_runs(runs)
    ids = set(ok["run_id"])
    series = dict(zip(ok["run_id"], ok["series"]))
    layers = _of(tables["layers"], ids)
    if layers is not None:
        layers = layers.assign(series=layers["run_id"].map(series))
    figures.add("frontier", quality.frontier(runs), "Cost and quality",
                "MoE FLOPs per token against loss and against KL to the model's own routing (symlog axis: the own "
                "routing at its own k is the reference, KL 0). One line per selector, each point labelled by its k "
                "(k_max for a dynamic selector), with its 95 % bootstrap interval over documents where recorded; ringed: "
                "Pareto-optimal points, whose loss / KL is below every cheaper job's with the two intervals apart (no "
                "point of equal FLOPs beyond it either); without intervals, no other job has lower or equal FLOPs and "
                "lower or equal loss / KL.")
    figures.add("tasks", quality.tasks(runs, _of(tables["tasks"], ids)), "Task accuracy",
                "Task scores against MoE FLOPs per token, one line per selector, points labelled by k.")
    figures.add("speed", quality.speed(runs), "Speed",
                "Prefill tokens per second against k (and TTFT / TPOT where decode was timed), one line per selector.")
    reference = reference_job(runs)
    if reference is not None:
        experts = _of(tables["experts"], {reference["run_id"]})
        figures.add("expert-load", routing.load_heatmap(experts, f"expert load, {_describe(reference)}"),
                    "Expert load per layer",
                    f"Tokens per expert of {_describe(reference)} (prefill), experts ranked by load within each layer, "
                    "relative to the layer's mean load on a log colour scale: 1 is a perfectly balanced layer, loads below "
                    "0.01 of the mean show at the scale's floor; black: experts that got no token.")
    if layers is not None:
        dynamic = ok[ok["series"] != OWN_ROUTING].sort_values("topk").drop_duplicates("series", keep="last")
        by_series = {row.series: _of(layers, {row.run_id}) for row in dynamic.itertuples()}
        figures.add("k-histogram", routing.k_histograms(by_series), "k per token (dynamic selectors)",
                    "Share of each layer's tokens routed to k experts, per dynamic selector (its job at the largest "
                    "k_max swept).")
        k = comparison_k(runs)
        at_k = ok[ok["topk"] == k].drop_duplicates("series", keep="last")
        compared = _of(layers, set(at_k["run_id"]))
        figures.add("layer-metrics", routing.layer_metrics(compared, k), "Routing per layer",
                    f"Router entropy (1 = uniform router), load coefficient of variation and dead experts per layer, "
                    f"one line per selector at k={k}.")
        figures.add("jaccard", analyses.jaccard(compared), "Routing overlap of consecutive layers",
                    "Mean per-token Jaccard similarity of a layer's selected experts and the next MoE layer's "
                    f"(expert ids compared as numbers), per selector at k={k}; the legend gives the mean across "
                    "layers.")
        figures.add("drop-rate", analyses.drop_rates(compared), "Capacity drops",
                    "Share of the assignments a router with capacity C = ceil(T k / E * cf) per call would drop, "
                    f"against the capacity factor cf, per selector at k={k}.")
    if reference is not None:
        num_experts = int(layers["num_experts"].max()) if layers is not None and "num_experts" in layers else None
        figures.add("coactivation", analyses.coactivation(_of(tables["coactivation"], {reference["run_id"]}),
                                                          num_experts, layer), "Co-activation",
                    f"Tokens that selected both experts a and b in one layer of {_describe(reference)}, log colour "
                    "scale (the layer: --layer, default the middle MoE layer).")
        figures.add("placement", analyses.placement(_of(tables["placement"], {reference["run_id"]})),
                    "Expert-parallel placement",
                    f"Busiest rank's load over the mean rank load (1 = perfectly even) when the experts of "
                    f"{_describe(reference)} are spread over N ranks, per placement, mean over layers (band: the "
                    "least and most imbalanced layer).")
    if reference is not None:
        figures.add("cache", analyses.cache_curves(_of(tables["cache"], {reference["run_id"]})),
                    "Expert-cache hit rate",
                    f"Hit rate of a per-layer expert cache of C experts against C / E, replaying the routing trace of "
                    f"{_describe(reference)} in serving order (prefill solid, decode dashed), per policy: LRU, LFU and "
                    "Belady's OPT (the offline bound); mean over each group of consecutive layers, band: min-max layer.")
    if ok.empty:
        figures.section.notes.append("no job of this model finished ok: nothing to plot")
    return figures.section


OPTIONAL = ("coactivation", "placement", "tasks")
# the expert-id columns of a table, each in 0 .. its run's experts - 1
EXPERT_IDS = {"experts": ("expert",), "coactivation": ("expert_a", "expert_b")}


def _experts_per_run(layers) -> dict:
    if layers is None or "num_experts" not in layers:
        return {}
    return layers.groupby("run_id")["num_experts"].max().dropna().astype(int).to_dict()


def _without_bad_parts(name: str, frame, experts: dict):
    """`frame` less the part files holding an expert id outside their run's experts (a damaged or foreign file),
    each named once on stderr, as unreadable parts are: one bad file never fails the report."""
    if frame is None:
        return None
    limit = frame["run_id"].map(experts) if experts else None
    bad = None
    for column in EXPERT_IDS.get(name, ()) if limit is not None else ():
        ids = frame[column].astype(float)
        out = (ids < 0) | (ids >= limit.astype(float))
        bad = out if bad is None else bad | out
    if bad is not None and bad.any():
        for path in frame.loc[bad, "__filename"].unique():
            rows = frame[bad & (frame["__filename"] == path)].iloc[0]
            print(f"report: warning: skipping {path}: {name} row with an expert id outside the "
                  f"{experts.get(rows['run_id'])} experts of its run ({', '.join(f'{c}={rows[c]}' for c in EXPERT_IDS[name])}); "
                  "delete it or move it out of the results dir", file=sys.stderr, flush=True)
        frame = frame[~frame["__filename"].isin(frame.loc[bad, "__filename"].unique())]
    frame = frame.drop(columns="__filename")
    return frame if len(frame) else None


def write_report(selection, out_dir: str | os.PathLike | None = None, layer: int | None = None) -> Path:
    """Write report.html and its PNGs into out_dir (default: <sweep dir>/report); returns the report's path."""
    out = user_directory(out_dir if out_dir is not None else selection.out_dir, "--out")
    runs = selection.runs.copy()
    runs["model"] = runs["model"].astype(str)
    runs["series"] = series_labels(runs)
    tables = {"layers": _prefill(selection.table("layers"))}
    experts = _experts_per_run(tables["layers"])
    tables.update({name: _prefill(_without_bad_parts(name, selection.table(name, with_files=True), experts))
                   for name in ("experts", *OPTIONAL)})
    tables["cache"] = selection.table("cache")  # both phases: the figure draws decode too
    sections = [model_section(model, rows, tables, out, layer) for model, rows in runs.groupby("model", sort=False)]
    return write_atomic(out / "report.html", page.render(selection.label, runs, sections), "the report")
