"""The sweep report: `python -m runner.report <sweep dir | results dir | sweep id | latest>` writes report.html and
its PNGs (matplotlib, Agg; no script, no network needed to view it). Also written at the end of every multirun
(`report=true`, the default; runner/cli/callbacks.py). What each figure shows: docs/report.md.

    build.py     the figures of each model, the PNGs, report.html
    figures.py   what the figures share: the Agg Figure, PNG writes, series labels, the FLOPs axis, the Pareto front
    quality.py   cost/quality frontier, speed against k, task accuracy
    routing.py   expert-load heatmap, k histograms, entropy / load CV / dead experts per layer
    analyses.py  co-activation, Jaccard of consecutive layers, capacity drops, expert-parallel placement
    page.py      the HTML page, the summary and provenance tables
"""
from .build import write_report

__all__ = ["write_report"]
