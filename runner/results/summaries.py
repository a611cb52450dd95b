"""What the runner prints and keeps about finished work: one job's summary lines, and a sweep's summary table
(<sweep dir>/summary.parquet and its one-screen rendering). The Hydra callback that calls these at the end of a
multirun is runner/cli/callbacks.py.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from .gpu_memory import NEAR_FULL, near_full
from ..profiler.selector_registry import OWN_ROUTING
from .io import read_table
from .resumed import RESUMED_OWN, fill_resumed, latest_per_job  # noqa: F401 - the results package's names

def sweep_runs(results_dir: str, sweep_id: str):
    """Every runs row of one sweep (all attempts)."""
    import pyarrow.dataset as ds

    return read_table(results_dir, "runs", filter=ds.field("sweep_id") == sweep_id)


def combine(runs, results_dir: str):
    """The sweep summary: the latest row per job, in job order; a `skipped` (resumed) job shows the metrics of the
    run it reused (fill_resumed, that run read from results_dir)."""
    if not len(runs):
        return runs
    runs = latest_per_job(runs, lambda ids: read_table(results_dir, "runs", filter=_run_ids(ids))).copy()
    runs["model"] = runs["model"].astype(str)
    return runs.sort_values(["job_num", "timestamp"], na_position="last").reset_index(drop=True)


# shown by the summary's own columns (model, selector, k), so not again as a swept key
_SHOWN = {"model", "selector", "selector.name", "topk"}


def swept_keys(summary) -> dict[str, list[str]]:
    """Each key whose override value differs between the jobs (in first-seen order) -> its value per job."""
    per_job = []
    for raw in summary["overrides"]:
        overrides = json.loads(raw) if isinstance(raw, str) else []
        per_job.append(dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o))
    keys = dict.fromkeys(key for job in per_job for key in job if key not in _SHOWN)
    return {key: [_cell_tail(job.get(key, "-")) for job in per_job] for key in keys
            if len({job.get(key) for job in per_job}) > 1}


def _cell_tail(value: str, width: int = 32) -> str:  # a table cell: the tail of a long value
    return value if len(value) <= width else "..." + value[-(width - 3):]  # the tail names the file


# the routing-analysis columns of runs (runner/job/analysis_tables.py), each in the summary when a job of the sweep has it
ANALYSIS_COLUMNS = {"drop_rate_cf1_25": "drop@1.25", "jaccard_mean": "jaccard", "ep_imbalance_balanced": "EP imb"}


# the FLOPs/token columns of the sweep summary: runs column -> (label, what it counts); every one is per token
FLOPS_COLUMNS = {
    "flops_per_token_analytic": ("MoE@k", "the MoE layers, analytic, at k (k_max for a dynamic selector)"),
    "flops_per_token_measured": ("MoE_measured", "the MoE layers as FlopCounterMode counted them"),
    "flops_per_token_routed": ("MoE_routed", "the MoE layers at the k each token was routed to"),
    "model_flops_per_token_analytic": ("model_FLOPs", "the whole forward, analytic, its MoE part as routed "
                                                      "(MoE_routed where recorded, else MoE@k)"),
}
# how the runner prints counts (parameters, bytes, FLOPs): SI prefixes; docs/results.md says the same
UNITS = "Counts: k = 1e3, M = 1e6, G = 1e9, T = 1e12 (6.92G parameters = 6.92 billion; 1.2GB = 1.2e9 bytes)."


def render(summary, state: dict[str, Any], path: Path) -> str:
    """The sweep's one-screen summary: a line of counts, a row per job (k vs FLOPs/token vs loss, one column per
    swept key), the failed jobs with their errors, where the summary and the results are."""
    import pandas as pd

    n = len(summary)
    planned = len(state["planned"]) if state["planned"] is not None else None
    head = f"sweep {state['sweep_id']}: {n} job(s)" + (f" of {planned} planned" if planned is not None else "")
    if not n:
        return head + " - no results recorded"
    counts = summary["status"].value_counts().to_dict()
    head += " (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")"
    quality = {"job_num": "job", "model": "model", "selector": "selector", "topk": "k", "k_mean": "k_mean",
               **{column: label for column, (label, _) in FLOPS_COLUMNS.items()}, "moe_share": "MoE%",
               "loss": "loss", "ppl": "ppl", "kl": "KL", "top1_agreement": "top1"}
    speed = {"tokens_per_s": "tok/s", "s_mfu_prefill": "S-MFU", "s_mbu_decode": "S-MBU", "wall_s": "wall s",
             "status": "status"}
    analyses = {name: label for name, label in ANALYSIS_COLUMNS.items()  # where the sweep recorded them
                if name in summary and summary[name].notna().any()}
    columns = {**quality, **analyses, **speed}
    summary = summary.reindex(columns=list(dict.fromkeys([*summary.columns, *columns])))  # older rows lack some
    summary["moe_share"] = moe_share(summary)
    table = summary[list(columns)].rename(columns=columns)
    for label in ANALYSIS_COLUMNS.values():
        if label in table:
            table[label] = table[label].map(lambda v: "-" if pd.isna(v) else format(v, ".3f"))
    for col in (*(label for label, _ in FLOPS_COLUMNS.values()), "tok/s"):
        table[col] = table[col].map(lambda v: "-" if pd.isna(v) else f"{v:,.0f}")
    for col in ("MoE%", "S-MFU", "S-MBU"):
        table[col] = table[col].map(lambda v: "-" if pd.isna(v) else f"{100 * v:.1f}")
    optional = ("MoE_measured", "MoE_routed", "S-MFU", "S-MBU")  # not measured, no dynamic k, on CPU (no peaks)
    table = table.drop(columns=[c for c in optional if table[c].eq("-").all()])
    for col, fmt in (("k_mean", ".2f"), ("loss", ".4f"), ("ppl", ",.2f"), ("KL", ".4g"), ("top1", ".3f"),
                     ("wall s", ".1f")):
        table[col] = table[col].map(lambda v, fmt=fmt: "-" if pd.isna(v) else format(v, fmt))
    table["k"] = table["k"].map(lambda v: "-" if pd.isna(v) else str(int(v)))
    table["job"] = table["job"].map(lambda v: "-" if pd.isna(v) else str(int(v)))
    for position, (key, values) in enumerate(swept_keys(summary).items(), start=4):  # after model, selector, k
        table.insert(position, key, values)
    shown = [f"{label} = {meaning}" for label, meaning in FLOPS_COLUMNS.values() if label in table]
    legend = f"FLOPs per token: {'; '.join(shown)}; MoE% = the MoE layers' share of model_FLOPs. {UNITS}"
    lines = [head, table.to_string(index=False), *textwrap.wrap(legend, 118)]
    failed = summary[summary["status"] == "failed"]
    if len(failed):
        lines.append(f"FAILED ({len(failed)}):")
        for _, row in failed.iterrows():
            job = "-" if pd.isna(row["job_num"]) else int(row["job_num"])
            overrides = " ".join(json.loads(row["overrides"])) if isinstance(row["overrides"], str) else ""
            lines.append(f"  job {job} [{overrides}]: {row['error']}")
    for _, row in summary.iterrows():  # a FLOPs count marked exact that measured otherwise
        warnings = [row.get(name) for name in ("flops_warning", "model_flops_warning")]
        warnings = [w for w in warnings if isinstance(w, str) and w]
        if warnings:
            job = "-" if pd.isna(row["job_num"]) else int(row["job_num"])
            lines.append(f"FLOPS NOT EXACT: job {job}: " + "; ".join(warnings))
    full = [(row["job_num"], near_full(row.get("memory_by_device"))) for _, row in summary.iterrows()]
    lines += [f"GPU MEMORY NEAR FULL (>{NEAR_FULL:.0%}): job {'-' if pd.isna(job) else int(job)}: {', '.join(gpus)}"
              for job, gpus in full if gpus]
    accuracy = task_accuracy(summary, state["results_dir"])
    if accuracy is not None:
        lines += ["task accuracy (eval=lm_eval; table=tasks) against MoE FLOPs/token:", accuracy.to_string(index=False)]
    lines.append(f"summary: {path}   results: {state['results_dir']} (sweep_id {state['sweep_id']})")
    return "\n".join(lines)


def moe_share(runs):
    """The MoE layers' share of the whole forward's FLOPs per token (routed count where recorded)."""
    moe = runs["flops_per_token_routed"].fillna(runs["flops_per_token_analytic"])
    return (moe / runs["model_flops_per_token_analytic"]).astype(float)


def forward_batch(batch_size: int, blocks: int | None) -> int:
    """The batch of the forwards that ran: the configured batch, or fewer where the data held fewer blocks (a
    `dataset.slice="[:1]"` of 2 blocks runs 2 x seq_len, not 8 x seq_len); the whole-model cost is computed at it."""
    return min(batch_size, blocks) if blocks else batch_size


def _whole_model(run, num) -> str:
    """The job's whole-model line: FLOPs per token and the MoE share, bytes per token, S-MFU / S-MBU when measured."""
    moe = run.flops_per_token_routed if run.flops_per_token_routed is not None else run.flops_per_token_analytic
    line = (f"  whole model: {num(run.model_flops_per_token_analytic)} FLOPs/token at "
            f"{forward_batch(run.batch_size, run.blocks)}x{run.seq_len}"
            f" (MoE {num(100 * moe / run.model_flops_per_token_analytic, '.1f')} %")
    line += f", measured {num(run.model_flops_per_token_measured)}" if run.model_flops_per_token_measured else ""
    line += ("" if run.model_flops_exact else ", not exact for this architecture") + "); "
    line += (f"bytes/token: parameters {_count(run.param_bytes_per_token, 'B')}, KV cache "
             f"{_count(run.kv_cache_bytes_per_token, 'B')}; params {_count(run.params_active_nonembedding)} active "
             "without embeddings")
    for label, value in (("prefill S-MFU", run.s_mfu_prefill), ("decode S-MBU", run.s_mbu_decode)):
        line += f"; {label} {num(100 * value, '.1f')} %" if value is not None else ""
    return line


def task_accuracy(summary, results_dir: str):
    """The sweep's task scores (table=tasks) against the cost: one row per job with tasks rows (model, selector, k,
    mean k, MoE FLOPs/token as routed on the text slice, else analytic), one column per task x metric (`value ±
    stderr`); None when no job of the sweep evaluated tasks. A resumed job shows the scores of the run it reused."""
    import pandas as pd
    import pyarrow.dataset as ds

    if not len(summary):
        return None
    scored_run = summary["resumed_from"].where(summary["status"] == "skipped", summary["run_id"])
    tasks = read_table(results_dir, "tasks", filter=ds.field("run_id").isin(list(scored_run.dropna())))
    if not len(tasks):
        return None
    tasks["score"] = [_score(value, stderr) for value, stderr in zip(tasks["value"], tasks["stderr"])]
    scores = tasks.pivot_table(index="run_id", columns=["task", "metric"], values="score", aggfunc="first")
    scores.columns = [f"{task} {metric}" for task, metric in scores.columns]
    jobs = summary.assign(scored_run=scored_run)
    flops = jobs["flops_per_token_routed"].fillna(jobs["flops_per_token_analytic"])
    table = pd.DataFrame({"job": jobs["job_num"].map(lambda v: "-" if pd.isna(v) else str(int(v))),
                          "model": jobs["model"], "selector": jobs["selector"],
                          "k": jobs["topk"].map(lambda v: "-" if pd.isna(v) else str(int(v))),
                          "k_mean": jobs["k_mean"].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}"),
                          "MoE FLOPs/tok": flops.map(lambda v: "-" if pd.isna(v) else f"{v:,.0f}"),
                          "scored_run": jobs["scored_run"]})
    table = table.merge(scores, left_on="scored_run", right_index=True, how="inner")
    return table.drop(columns="scored_run")


def _score(value: float, stderr: float | None) -> str:
    """A task score as printed: `0.375±0.183` (the value alone when lm-eval gives no standard error)."""
    return f"{value:.3f}" + ("" if stderr is None or stderr != stderr else f"±{stderr:.3f}")


def job_summary(run, model: str, results_dir: str, job_dir: str | None = None, tasks=None) -> str:
    """What one finished job prints: what ran where, quality, MoE FLOPs/token and parameters, decode times, task
    scores, speed, where its rows are. `run` is its RunRecord; `job_dir` is named when given (a single run's); `tasks`
    its tasks rows (eval=lm_eval)."""
    def num(v: Any, fmt: str = ",.0f") -> str:
        return "-" if v is None or (isinstance(v, float) and v != v) else format(v, fmt)

    job = f"job {run.job_num}: " if run.job_num is not None else ""
    selector = run.selector or OWN_ROUTING
    routing = "own routing" if selector == OWN_ROUTING else f"{selector} {run.selector_params}"
    lines = [f"runner: {job}{model} ({run.hf_id or run.model_type} [{run.weights}]) k={run.topk} ({routing}) "
             f"on {run.dataset_source} [{run.device_name}, {run.dtype}]"]
    if run.tokens:
        quality = f"loss {num(run.loss, '.4f')}  ppl {num(run.ppl, ',.2f')}"
        if run.reference:
            quality += (f"  | default routing: loss {num(run.ref_loss, '.4f')}, KL {num(run.kl, '.4g')}, "
                        f"top-1 agreement {num(run.top1_agreement, '.3f')}")
        lines.append(f"  {run.tokens:,} tokens ({run.blocks} blocks x {run.seq_len}): {quality}")
    dynamic = run.selector not in (None, OWN_ROUTING)
    flops = f"analytic {num(run.flops_per_token_analytic)}" + (f" at k_max={run.topk}" if dynamic else "")
    if run.flops_per_token_measured is not None:
        flops += f", measured {num(run.flops_per_token_measured)}"
    if run.k_mean is not None and run.selector != OWN_ROUTING:
        flops += f", routed {num(run.flops_per_token_routed)} (mean k {num(run.k_mean, '.2f')})"
    lines.append(f"  MoE FLOPs/token over {run.moe_layers} MoE layers: {flops}; params "
                 f"{_count(run.params_total)} total, {_count(run.params_active)} active")
    analyses = [f"{label} {num(getattr(run, name), '.3f')}" for name, label in (
        ("drop_rate_cf1_25", "drop rate at cf 1.25"), ("jaccard_mean", "Jaccard to the next layer"))
        if getattr(run, name) is not None]
    if run.ep_imbalance_balanced is not None:
        analyses.append(f"EP{run.ep_size_max} imbalance {num(run.ep_imbalance_balanced, '.3f')} (balanced)")
    if run.trace_rows is not None:
        analyses.append(f"trace {run.trace_rows:,} rows")
    if analyses:
        lines.append("  routing: " + ", ".join(analyses))
    if run.model_flops_per_token_analytic:
        lines.append(_whole_model(run, num))
    lines += [f"  WARNING: FLOPs not exact: {warning}" for warning in (run.flops_warning, run.model_flops_warning)
              if warning]
    if run.ttft_ms is not None:
        lines.append(f"  decode {run.decode_tokens} tokens/prompt (static cache): TTFT {num(run.ttft_ms, '.2f')} ms, "
                     f"TPOT {num(run.tpot_ms, '.2f')} ms (profiler paused: TTFT {num(run.ttft_paused_ms, '.2f')} ms, "
                     f"TPOT {num(run.tpot_paused_ms, '.2f')} ms)")
    if tasks is not None and len(tasks):
        scores = "; ".join(f"{task} " + ", ".join(f"{r.metric} {_score(r.value, r.stderr)}" for r in rows.itertuples())
                           + f" (n={rows['n'].iloc[0]}, {rows['num_fewshot'].iloc[0]}-shot)"
                           for task, rows in tasks.groupby("task", sort=False))
        lines.append(f"  tasks (lm-eval {run.lm_eval_version}): {scores}")
    if run.tokens:
        lines.append(f"  {num(run.tokens_per_s)} tokens/s ({num(run.tokens_per_s_paused)} paused), wall {num(run.wall_s, '.2f')} s "
                     f"(model load {num(run.model_load_s, '.2f')} s{', reused' if run.model_reused else ''})"
                     f", peak RSS {_count(run.peak_rss_bytes, 'B')}")
    if run.memory_by_device:
        peaks = json.loads(run.memory_by_device)
        lines.append("  peak GPU memory (reserved): " + ", ".join(
            f"{device} {_count(p['peak_reserved_bytes'], 'B')} of {_count(p['total_bytes'], 'B')}"
            for device, p in peaks.items()))
        lines += [f"  WARNING: GPU memory near full (>{NEAR_FULL:.0%}): {gpu}" for gpu in near_full(run.memory_by_device)]
    lines.append(f"  results: {Path(results_dir)} (run_id {run.run_id}, config {run.config_hash})"
                 + (f"; job dir: {job_dir}" if job_dir else ""))
    return "\n".join(lines)


def skip_summary(run, model: str, prior) -> str:
    """What a resumed job prints: `prior` is the ok runs row whose results it reuses."""
    job = f"job {run.job_num}: " if run.job_num is not None else ""
    return (f"runner: {job}{model} topk={prior['topk']} selector={prior['selector']}: skipped (resume=true), "
            f"result of run {prior['run_id']} from {prior['timestamp']}")


def _count(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    value = float(value)
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def _run_ids(ids):
    import pyarrow.dataset as ds

    return ds.field("run_id").isin(ids)
