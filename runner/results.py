"""Tidy parquet results: explicit pyarrow schemas, one hive-partitioned dataset per results dir, atomic part files.

Layout (partition keys live only in directory names, never inside the files):

    <results_dir>/table=runs/model=<slug>/part-<config_hash>-<run_id>-<host>-<pid>.parquet
    <results_dir>/table=layers/model=<slug>/part-....parquet
    <results_dir>/table=experts/model=<slug>/part-....parquet

Read with `pandas.read_parquet(results_dir / "table=runs")`, `runner.results.read_table(results_dir, "runs")` or DuckDB
`read_parquet('<results_dir>/table=runs/**/*.parquet', hive_partitioning=true, union_by_name=true)`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from .errors import OutputError, ResultsNotFound

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TABLES = ("runs", "layers", "experts")
PARTITION = pa.schema([("model", pa.string())])

_s, _i32, _i64, _f64, _b = pa.string(), pa.int32(), pa.int64(), pa.float64(), pa.bool_()
_ts = pa.timestamp("us", tz="UTC")

# Columns every table carries to join back to its run.
KEY_FIELDS = [
    ("schema_version", _i32), ("run_id", _s), ("sweep_id", _s), ("job_num", _i32), ("config_hash", _s),
    ("timestamp", _ts), ("topk", _i32), ("selector", _s), ("dataset", _s), ("weights", _s),
]

RUNS = pa.schema(KEY_FIELDS + [
    # identity and bookkeeping
    ("status", _s), ("error", _s), ("error_type", _s), ("resumed_from", _s), ("sweep_dir", _s), ("job_dir", _s),
    ("overrides", _s), ("experiment", _s), ("tag", _s),
    # what ran
    ("hf_id", _s), ("model_type", _s), ("revision", _s), ("topk_requested", _i32), ("default_topk", _i32),
    ("selector_params", _s), ("k_max", _i32), ("dataset_kind", _s), ("dataset_source", _s), ("seq_len", _i32),
    ("batch_size", _i32), ("max_batches", _i32), ("device", _s), ("device_name", _s), ("dtype", _s),
    ("experts_implementation", _s), ("tokenizer", _s), ("seed", _i64), ("measure_flops", _b), ("compile", _b),
    ("compile_mode", _s), ("decode_tokens", _i32),
    ("dims_override", _s), ("dims_fallback", _s),
    # data
    ("documents", _i64), ("blocks", _i64), ("batches", _i64), ("tokens", _i64), ("targets", _i64),
    # quality
    ("loss", _f64), ("ppl", _f64), ("reference", _b), ("ref_loss", _f64), ("ref_ppl", _f64), ("kl", _f64),
    ("top1_agreement", _f64),
    # routing and FLOPs (MoE layers only)
    ("moe_layers", _i32), ("k_mean", _f64), ("flops_per_token_analytic", _f64), ("flops_per_token_routed", _f64),
    ("flops_per_token_measured", _f64), ("flops_measured_tokens", _i64), ("flops_exact", _b),
    ("params_total", _i64), ("params_active", _f64),
    # time and memory
    ("model_load_s", _f64), ("model_reused", _b), ("data_s", _f64), ("forward_s", _f64), ("reference_s", _f64),
    ("tokens_per_s", _f64), ("ttft_ms", _f64), ("tpot_ms", _f64), ("decode_steps", _i64), ("wall_s", _f64), ("peak_rss_bytes", _i64), ("peak_allocated_bytes", _i64),
    ("peak_reserved_bytes", _i64),
    # provenance
    ("runner_version", _s), ("torch_version", _s), ("transformers_version", _s), ("python_version", _s),
    ("git_sha", _s), ("git_dirty", _b), ("host", _s), ("pid", _i64), ("config_yaml", _s),
])

try:  # the profiler's resolved dimensions (value, source, detail each); handlers.base is torch-free
    from handlers.base import DIMENSIONS as _DIMS
except ImportError:  # pragma: no cover
    _DIMS = ("num_experts", "top_k", "hidden_dim", "expert_dim", "shared_expert_dim")
# `top_k` is the live k that ran; the resolved top-k dimension (the model's own) is `default_top_k`
_DIM_COLUMNS = tuple("default_top_k" if d == "top_k" else d for d in _DIMS)
LAYERS = pa.schema(KEY_FIELDS + [
    ("phase", _s), ("layer", _i32), ("position", _i32), ("module", _s), ("block_class", _s), ("top_k", _i64), ("tokens", _i64),
    ("assignments", _i64), ("k_mean", _f64), ("k_hist", pa.list_(_i64)), ("k_at_1", _f64), ("k_at_max", _f64),
    ("flops_router", _f64), ("flops_experts", _f64), ("flops_shared", _f64), ("flops", _f64),
    ("flops_per_token", _f64), ("flops_per_token_analytic", _f64), ("flops_measured", _f64),
    ("flops_measured_per_token", _f64),
    ("router_entropy", _f64), ("top1_prob", _f64), ("top1_margin", _f64), ("selected_mass", _f64),
    ("load_cv", _f64), ("load_gini", _f64), ("load_entropy", _f64), ("load_max_mean", _f64), ("dead_experts", _i64),
    ("latency_ms_mean", _f64), ("latency_ms_p50", _f64), ("latency_calls", _i64), ("exact", _b), ("note", _s),
    ("dims_warning", _s),
] + [f for d in _DIM_COLUMNS for f in ((d, _i64), (f"{d}_source", _s), (f"{d}_detail", _s))])

EXPERTS = pa.schema(KEY_FIELDS + [
    ("phase", _s), ("layer", _i32), ("expert", _i32), ("tokens", _i64), ("load_fraction", _f64), ("gate_mass", _f64),
    ("mean_prob", _f64),
])

SCHEMAS = {"runs": RUNS, "layers": LAYERS, "experts": EXPERTS}
_warned: set[tuple[str, str]] = set()


def full_schema(table: str) -> pa.Schema:
    """The file schema plus the `model` partition column (what readers see)."""
    return SCHEMAS[table].append(pa.field("model", pa.string()))


def _coerce(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (list, tuple)) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    if pa.types.is_integer(typ):
        if isinstance(value, float):
            return int(value) if value.is_integer() else None
        return int(value)
    if pa.types.is_floating(typ):
        return float(value)
    if pa.types.is_boolean(typ):
        return bool(value)
    if pa.types.is_string(typ):
        return str(value)
    if pa.types.is_list(typ):
        return [int(v) for v in value] if value is not None else None
    return value


def to_arrow(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    schema = SCHEMAS[table]
    names = set(schema.names)
    for row in rows:
        for key in row:
            if key not in names and key != "model" and (table, key) not in _warned:
                _warned.add((table, key))
                log.warning("results: column %r of table %s is not in the schema (v%d); dropped", key, table,
                            SCHEMA_VERSION)
    arrays = [pa.array([_coerce(row.get(f.name), f.type) for row in rows], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)[:40] or "x"


def check_writable(results_dir: str | os.PathLike) -> Path:
    """Create the results dir and prove a file can be written there; OutputError (one line) otherwise."""
    root = Path(results_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"results_dir {str(root)!r} is not writable ({exc.strerror or exc}); "
                          "set results_dir=<a writable directory>") from None
    return root


def write_part(results_dir: str | os.PathLike, table: str, model: str, rows: list[dict[str, Any]],
               config_hash: str | None, run_id: str) -> Path | None:
    """Write one part file atomically (dot-prefixed temp file + os.replace). Returns its path (None when no rows)."""
    if not rows:
        return None
    import pyarrow.parquet as pq

    data = to_arrow(table, rows)
    directory = Path(results_dir) / f"table={table}" / f"model={_safe(model)}"
    name = f"part-{(config_hash or 'nohash')[:12]}-{run_id[:12]}-{_safe(socket.gethostname())}-{os.getpid()}.parquet"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{name}.tmp"
        pq.write_table(data, tmp)
        os.replace(tmp, directory / name)
    except OSError as exc:
        raise OutputError(f"cannot write results to {directory} ({exc.strerror or exc})") from None
    return directory / name


def nullable_types(arrow_type: pa.DataType):
    """pyarrow -> pandas types for to_pandas(types_mapper=): integer columns stay integers (pandas' nullable Int32 /
    Int64) instead of turning into float64 wherever a value is missing."""
    import pandas as pd

    return {_i32: pd.Int32Dtype(), _i64: pd.Int64Dtype()}.get(arrow_type)


def read_table(results_dir: str | os.PathLike, table: str, filter: Any = None, columns: list[str] | None = None):
    """One table of a results dir as a pandas DataFrame (explicit schema; `model` from the partition; integer columns
    as nullable Int32/Int64)."""
    import pyarrow.dataset as ds

    root = Path(results_dir) / f"table={table}"
    schema = full_schema(table)
    if not root.is_dir():
        data = schema.empty_table() if columns is None else schema.empty_table().select(columns)
        return data.to_pandas(types_mapper=nullable_types)
    files = readable_parts(root)

    def dataset(paths: list[str]):
        return ds.dataset(paths, format="parquet", schema=schema, partition_base_dir=str(root),
                          partitioning=ds.partitioning(PARTITION, flavor="hive"))

    try:
        data = dataset(files).to_table(filter=filter, columns=columns)
    except (pa.ArrowException, OSError):  # a file whose footer reads but whose data does not: find it, skip it
        tables = []
        for path in files:
            try:
                tables.append(dataset([path]).to_table(filter=filter, columns=columns))
            except (pa.ArrowException, OSError) as exc:
                _skip_corrupt(path, exc)
        data = pa.concat_tables(tables) if tables else dataset([]).to_table(filter=filter, columns=columns)
    return data.to_pandas(types_mapper=nullable_types)


_skipped: set[str] = set()


def readable_parts(root: Path) -> list[str]:
    """The part files under a table root whose parquet footer reads; each other one is named once on stderr and left
    out (a truncated copy, a disk-full write of another tool): one bad file never hides the other results."""
    import pyarrow.parquet as pq

    good = []
    for path in sorted(root.rglob("*.parquet")):
        if any(part.startswith((".", "_")) for part in path.relative_to(root).parts):
            continue  # temp files of writes in flight
        try:
            pq.read_metadata(path)
        except (pa.ArrowException, OSError) as exc:
            _skip_corrupt(str(path), exc)
            continue
        good.append(str(path))
    return good


def _skip_corrupt(path: str, exc: BaseException) -> None:
    if path not in _skipped:
        _skipped.add(path)
        import sys

        print(f"runner: warning: skipping unreadable results file {path} ({' '.join(str(exc).split())[:160]}); "
              "delete it or move it out of the results dir", file=sys.stderr, flush=True)


def sweep_id_for(sweep_dir: str | os.PathLike) -> str:
    """Stable id of a sweep: a hash of its absolute directory (known to the launcher and to every job)."""
    return hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]


def default_results_dir() -> Path:
    """Where `python -m runner` writes by default: ${out_root}/results, out_root = $RUNNER_OUT or outputs."""
    return Path(os.environ.get("RUNNER_OUT") or "outputs") / "results"


def load(table: str = "runs", sweep: str | os.PathLike = "latest", results_dir: str | os.PathLike | None = None,
         filter: Any = None):
    """Rows of one sweep (or one single run) as a pandas DataFrame.

    table: runs | layers | experts, or summary (a sweep's summary.parquet: one row per job, its latest attempt).
    sweep: "latest" - what ran last: the sweep, or the single run, that wrote the newest row of results_dir;
           "all" - every row; a sweep directory (outputs/multirun/<date>/<time>); a sweep_id or run_id as printed.
    results_dir: default: the one a sweep directory's sweep.json names, else $RUNNER_OUT/results or outputs/results.
    """
    import pandas as pd
    import pyarrow.dataset as ds

    if table not in (*TABLES, "summary"):
        raise ValueError(f"table {table!r} is not one of {', '.join(TABLES)}, summary")
    sweep_dir = Path(sweep) if isinstance(sweep, os.PathLike) or os.sep in str(sweep) else None
    if sweep_dir is not None and not sweep_dir.is_dir():
        raise ResultsNotFound(f"sweep directory {sweep_dir} does not exist")
    if results_dir is None and sweep_dir is not None and (sweep_dir / "sweep.json").is_file():
        results_dir = json.loads((sweep_dir / "sweep.json").read_text()).get("results_dir")
    root = Path(results_dir) if results_dir is not None else default_results_dir()
    if not (root / "table=runs").is_dir():
        raise ResultsNotFound(f"no results in {root} (no table=runs/): run `python -m runner` first, or pass "
                              "results_dir=<the results_dir the runs wrote to>")
    if str(sweep) == "all":
        if table == "summary":
            raise ValueError("table 'summary' is one sweep's; pass sweep='latest', a sweep directory or a sweep_id")
        return _ordered(read_table(root, table, filter=filter), "timestamp", "job_num")
    index = read_table(root, "runs", columns=["run_id", "sweep_id", "sweep_dir", "timestamp"])
    if sweep_dir is not None:
        key, value = "sweep_id", sweep_id_for(sweep_dir)
    elif str(sweep) == "latest":
        newest = index.sort_values("timestamp").iloc[-1]
        key, value = ("run_id", newest["run_id"]) if pd.isna(newest["sweep_id"]) else ("sweep_id", newest["sweep_id"])
    elif (index["sweep_id"] == str(sweep)).any():
        key, value = "sweep_id", str(sweep)
    elif (index["run_id"] == str(sweep)).any():
        key, value = "run_id", str(sweep)
    else:
        raise ResultsNotFound(f"no sweep or run {str(sweep)!r} in {root}; recent sweeps: {_recent_sweeps(index)}")
    rows = index[index[key] == value]
    if rows.empty:
        raise ResultsNotFound(f"sweep {sweep_dir} has no rows in {root} (did it write to another results_dir?)")
    if table == "summary":
        summary = rows["sweep_dir"].dropna()
        if key == "sweep_id" and len(summary) and (Path(summary.iloc[0]) / "summary.parquet").is_file():
            return pd.read_parquet(Path(summary.iloc[0]) / "summary.parquet")
        table = "runs"  # a single run (or a sweep still running): its own rows
    selected = ds.field(key) == value
    return _ordered(read_table(root, table, filter=selected if filter is None else selected & filter),
                    "job_num", "timestamp")


def _ordered(frame, *first: str):
    """Rows in job (or time) order, then layer and expert; files come back in no particular order."""
    keys = [c for c in (*first, "layer", "expert") if c in frame.columns]
    return frame.sort_values(keys, kind="stable", na_position="last").reset_index(drop=True)


def _recent_sweeps(index) -> str:
    sweeps = index.dropna(subset=["sweep_id"]).sort_values("timestamp").drop_duplicates("sweep_id", keep="last")
    recent = [f"{row.sweep_id} ({row.sweep_dir})" for row in sweeps.tail(3).itertuples()][::-1]
    return ", ".join(recent) or "none (single runs only: pass a run_id, or sweep='all')"


def find_ok(results_dir: str | os.PathLike, config_hash: str):
    """The latest ok run of this resolved config, or None (resume)."""
    import pyarrow.dataset as ds

    df = read_table(results_dir, "runs", filter=(ds.field("config_hash") == config_hash) & (ds.field("status") == "ok"))
    if df.empty:
        return None
    return df.sort_values("timestamp").iloc[-1]


def new_run_id() -> str:
    return uuid.uuid4().hex


def rows_from_frame(frame, keys: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for record in frame.to_dict("records"):
        yield {**keys, **record}
