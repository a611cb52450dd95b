"""Baseline entries from a sweep: the rows of its `runs` table (`--results DIR`)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import one_line
from ..profiler.selector_registry import OWN_ROUTING
from .entries import ROUTING_RTOL, SWEEP_LOSS_RTOL, BaselineError, Entry, clean, selector_label


def read_runs(path: Path):
    """A sweep dir (summary.parquet) or a results dir (table=runs): one row per job, latest first-class result."""
    import pandas as pd

    from ..results import fill_resumed, read_table

    if not path.exists():
        raise BaselineError(f"--results {path}: no such directory")
    if path.name.startswith("table=runs") and path.is_dir():
        path = path.parent
    if (path / "summary.parquet").is_file():
        try:
            runs = pd.read_parquet(path / "summary.parquet")
        except Exception as exc:  # pyarrow: ArrowInvalid, OSError
            raise BaselineError(f"{path / 'summary.parquet'}: not a readable parquet file "
                                f"({one_line(exc, 200)})") from None
    elif (path / "table=runs").is_dir():
        try:
            runs = read_table(path, "runs")
        except Exception as exc:
            raise BaselineError(f"{path / 'table=runs'}: cannot read the runs table ({one_line(exc, 200)})") from None
        runs = fill_resumed(runs)  # a resumed job reports the metrics of the run it reused, as the sweep summary does
    else:
        raise BaselineError(f"--results {path}: neither a sweep directory (summary.parquet) nor a results directory "
                            "(table=runs/)")
    if "status" not in runs.columns or "model" not in runs.columns:
        raise BaselineError(f"--results {path}: not a runs table (no status / model columns)")
    return runs


def _json_dict(raw: Any) -> dict[str, Any]:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return {}
    try:
        params = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (ValueError, TypeError):
        return {}
    return params if isinstance(params, dict) else {}


# runs columns that change a job's numbers besides model, k and selector: part of a sweep entry's key
SETTING_COLUMNS = ("seq_len", "batch_size", "max_batches", "dtype", "device", "weights", "seed")


def run_setting(row) -> str:
    """The key's dataset part for a sweep job: the data source (path, config, split, slice, files) and every setting
    that changes the numbers, e.g. `builtin[:8] seq_len=64 batch_size=8 max_batches=1 dtype=float32 device=cpu
    weights=random seed=0`; dimension overrides and fallbacks when given."""
    parts = [str(row.get("dataset_source") or row.get("dataset") or "")]
    parts += [f"{column}={clean(row.get(column))}" for column in SETTING_COLUMNS if clean(row.get(column)) is not None]
    for which in ("override", "fallback"):
        dims = _json_dict(row.get(f"dims_{which}"))
        parts += [f"{which}.{dim}={value}" for dim, value in sorted(dims.items())]
    return " ".join(parts)


def job_key(row) -> tuple[str, Any, str, str]:
    """What identifies a job's measurement across sweeps: (model, k, selector with its parameters, run_setting)."""
    topk = clean(row.get("topk"))
    selector = str(row.get("selector") or OWN_ROUTING)
    if selector == "topk":  # results written before the own-routing selector was named `router`
        selector = OWN_ROUTING
    params = _json_dict(row.get("selector_params"))
    if selector != OWN_ROUTING and params.get("k_max") is None and topk is not None:
        params["k_max"] = topk  # a job that failed before its selector resolved k_max
    label = selector_label(selector, params) if selector != OWN_ROUTING else OWN_ROUTING
    return str(row["model"]), topk, label, run_setting(row)


def sweep_entries(runs, loss_rtol: float = SWEEP_LOSS_RTOL) -> list[Entry]:
    """Key model/topk/selector(+params)/data and settings (run_setting); metrics: analytic and measured MoE
    FLOPs/token, loss, status. When a key occurs more than once (a shared results dir), the latest row counts."""
    if "timestamp" in runs.columns:
        runs = runs.sort_values("timestamp", kind="stable")
    latest: dict[tuple, Any] = {job_key(row): row for _, row in runs.iterrows()}
    out: list[Entry] = []
    for (model, topk, label, dataset), row in latest.items():
        fields = dict(k=topk, selector=label, dataset=dataset)
        status = str(row.get("status"))
        out.append(Entry(model, "status", "ok" if status == "skipped" else status, **fields))
        for column, metric, tolerance in (
            ("flops_per_token_analytic", "moe_flops_per_token", None),
            ("flops_per_token_measured", "moe_flops_per_token_measured", None if label == OWN_ROUTING else ROUTING_RTOL),
            ("loss", "loss", loss_rtol),
        ):
            value = clean(row.get(column))
            if value is not None:
                out.append(Entry(model, metric, value, tolerance=tolerance, **fields))
    return out

