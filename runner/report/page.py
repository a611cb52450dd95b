"""The report's HTML: one static page, no script, no network; the figures are PNG files beside it (relative links).
The summary table's cells carry their exact value in `data-value` (what the tests compare with the runs table)."""
from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass, field
from typing import Any

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1240px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.3em; }
figure { margin: 0.6em 0 1.4em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.88em; color: #555; max-width: 960px; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; } td { white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.failed td { background: #fde8e8; }
.meta { color: #555; font-size: 0.9em; } nav a { margin-right: 1em; }
.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 0.5em 0.8em; font-weight: 600; }
#provenance tr.warning th, #provenance tr.warning td { background: #fff3cd; }
"""


@dataclass
class Figure:
    file: str
    title: str
    caption: str


@dataclass
class Section:
    model: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# (header, runs column, format); columns that are absent or empty in every row are left out
TABLE_COLUMNS = (
    ("job", "job_num", "d"), ("model", "model", "s"), ("selector", "series", "s"), ("k", "topk", "d"),
    ("k_mean", "k_mean", ".3f"), ("MoE FLOPs/tok analytic", "flops_per_token_analytic", ",.0f"),
    ("MoE FLOPs/tok measured", "flops_per_token_measured", ",.0f"),
    ("MoE FLOPs/tok routed", "flops_per_token_routed", ",.0f"),
    ("model FLOPs/tok analytic", "model_flops_per_token_analytic", ",.0f"),
    ("model FLOPs/tok measured", "model_flops_per_token_measured", ",.0f"), ("loss", "loss", ".5f"), ("ppl", "ppl", ",.3f"),
    ("KL", "kl", ".4g"), ("top-1", "top1_agreement", ".4f"), ("tokens/s", "tokens_per_s", ",.0f"),
    ("TTFT ms", "ttft_ms", ".3f"), ("TPOT ms", "tpot_ms", ".3f"), ("MFU prefill", "s_mfu_prefill", ".3g"),
    ("MBU decode", "s_mbu_decode", ".3g"), ("wall s", "wall_s", ".2f"), ("status", "status", "s"),
)
PROVENANCE = (("weights", "weights"), ("runner", "runner_version"), ("torch", "torch_version"), ("transformers", "transformers_version"),
              ("python", "python_version"), ("git sha", "git_sha"), ("git dirty", "git_dirty"),
              ("device", "device_name"), ("dtype", "dtype"), ("host", "host"), ("dataset", "dataset_source"),
              ("seq_len", "seq_len"), ("batch_size", "batch_size"), ("max_batches", "max_batches"))


def _missing(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list-like value
        return False


def cell(value: Any, fmt: str) -> str:
    if _missing(value):
        return '<td class="num">-</td>'
    if fmt == "s":
        return f"<td>{html.escape(str(value))}</td>"
    number = float(value)
    exact = repr(int(value)) if fmt == "d" else repr(number)
    shown = str(int(value)) if fmt == "d" else (format(number, fmt) if math.isfinite(number) else str(number))
    return f'<td class="num" data-value="{exact}">{shown}</td>'


def summary_table(runs) -> str:
    columns = [(h, c, f) for h, c, f in TABLE_COLUMNS if c in runs and runs[c].notna().any()]
    head = "".join(f'<th data-column="{c}">{html.escape(h)}</th>' for h, c, _ in columns)
    body = []
    for _, row in runs.iterrows():
        failed = ' class="failed"' if row.get("status") == "failed" else ""
        body.append(f'<tr data-run-id="{html.escape(str(row["run_id"]))}"{failed}>'
                    + "".join(cell(row[c], f) for _, c, f in columns) + "</tr>")
    return f'<div class="wide"><table id="summary"><tr>{head}</tr>\n' + "\n".join(body) + "</table></div>"


RANDOM = "random"  # runner.config.schema.Weights.random (not imported: schema pulls in the config machinery)


def random_weights(runs) -> str:
    """A warning above everything when a job ran on seeded random weights: its routing, loss and KL describe an
    untrained model, not the checkpoint it is named after. Empty when every job had real weights."""
    if "weights" not in runs:
        return ""
    random = runs[runs["weights"] == RANDOM]
    if random.empty:
        return ""
    which = "every job" if len(random) == len(runs) else f"{len(random)} of {len(runs)} jobs"
    models = ", ".join(sorted({str(m) for m in random["model"]}))
    return (f'<p class="warning" id="random-weights">Random weights: {which} ({html.escape(models)}) ran on seeded '
            "random weights (model.weights=random), not a trained checkpoint. Routing, loss, KL and task scores "
            "describe an untrained model; FLOPs, bytes and speed are those of the architecture.</p>")


def provenance_table(runs) -> str:
    rows = []
    for label, column in PROVENANCE:
        if column not in runs:
            continue
        values = [str(v) for v in runs[column].dropna().unique()]
        if values:
            warn = ' class="warning"' if column == "weights" and RANDOM in values else ""
            rows.append(f"<tr{warn}><th>{html.escape(label)}</th><td>{html.escape(', '.join(values))}</td></tr>")
    return '<table id="provenance">' + "".join(rows) + "</table>"


def failures(runs) -> str:
    failed = runs[runs["status"] == "failed"]
    if failed.empty:
        return ""
    items = "".join(f"<li>job {html.escape(str(r.job_num))} ({html.escape(str(r.model))}): "
                    f"{html.escape(str(r.error))}</li>" for r in failed.itertuples())
    return f"<h3>Failed jobs ({len(failed)})</h3><ul>{items}</ul>"


def render(label: str, runs, sections: list[Section]) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(runs["status"].value_counts().items()))
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#model-{html.escape(s.model)}">{html.escape(s.model)}</a>' for s in sections)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>MoE report: "
             f"{html.escape(label)}</title><style>{STYLE}</style></head><body>",
             f"<h1>MoE sweep report</h1><p class=\"meta\">{html.escape(label)} &middot; {len(runs)} job(s) "
             f"({html.escape(counts)}) &middot; generated {now}</p>", random_weights(runs),
             f"<nav>{nav}<a href=\"#summary-table\">summary table</a>"
             "<a href=\"#provenance-table\">provenance</a></nav>"]
    for section in sections:
        parts.append(f'<h2 id="model-{html.escape(section.model)}">{html.escape(section.model)}</h2>')
        parts += [f"<p class=\"meta\">{html.escape(note)}</p>" for note in section.notes]
        for fig in section.figures:
            parts.append(f"<h3>{html.escape(fig.title)}</h3><figure><img src=\"{html.escape(fig.file)}\" "
                         f"alt=\"{html.escape(fig.title)}\"><figcaption>{html.escape(fig.caption)}</figcaption>"
                         "</figure>")
    parts += ['<h2 id="summary-table">Summary</h2>', summary_table(runs), failures(runs),
              '<h2 id="provenance-table">Provenance</h2>', provenance_table(runs), "</body></html>"]
    return "\n".join(parts)
