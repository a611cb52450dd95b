"""Reading and writing the results: one hive-partitioned parquet dataset per results dir, atomic part files.

Layout (partition keys live only in directory names, never inside the files):

    <results_dir>/table=runs/model=<slug>/part-<config_hash>-<run_id>-<host>-<pid>.parquet
    <results_dir>/table=layers/model=<slug>/part-....parquet
    <results_dir>/table=experts/model=<slug>/part-....parquet   (and coactivation, transitions, placement, trace)

Read with `runner.results.load("runs")` (one sweep), `runner.results.read_table(results_dir, "runs")` (everything),
`pandas.read_parquet(results_dir / "table=runs")` or DuckDB
`read_parquet('<results_dir>/table=runs/**/*.parquet', hive_partitioning=true, union_by_name=true)`.
The schemas are the records' (records.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import sys
import uuid
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from ..errors import OutputError, ResultsNotFound, one_line
from ..files import remove_stale_temps, temp_path, write_atomic
from ..config.schema import MODEL_NAME_MAX
from .columns import coerce
from .resumed import latest_per_job
from .records import PARTITION, SCHEMA_VERSION, SCHEMAS, TABLES, full_schema

log = logging.getLogger(__name__)

_warned: set[tuple[str, str]] = set()

# environment values the running job's config read (runner/job/pipeline.py: environment_values) -> the `${oc.env:NAME}` the
# results store in their place, in every string column of every table and in the partition names
_redactions: dict[str, str] = {}
# a value this short is replaced only where it is the whole string: "1" or "cpu" occur inside unrelated text
WHOLE_ONLY = 6


def redact_environment(values: dict[str, str]) -> None:
    """From now on every string written to the results has these values replaced by their references."""
    _redactions.clear()
    _redactions.update({value: ref for value, ref in values.items() if value})


def redact(value: Any) -> Any:
    if not _redactions or not isinstance(value, str):
        return value
    for secret, ref in _redactions.items():
        if value == secret or (len(secret) >= WHOLE_ONLY and secret in value):
            value = value.replace(secret, ref)
    return value


def _redact_table(data: pa.Table) -> pa.Table:
    if not _redactions:
        return data
    import pyarrow.compute as pc

    for i, field in enumerate(data.schema):
        if pa.types.is_string(field.type):
            column = data.column(i)
            for secret, ref in _redactions.items():
                column = pc.replace_substring(column, secret, ref) if len(secret) >= WHOLE_ONLY else \
                    pc.if_else(pc.equal(column, secret), ref, column)
            data = data.set_column(i, field, column)
    return data


def to_arrow(table: str, rows: list[dict[str, Any] | Any]) -> pa.Table:
    """Rows (dicts by column name, or records) as an arrow table of `table`'s schema; a key the schema lacks is
    dropped with one warning per table and key."""
    schema = SCHEMAS[table]
    rows = [row.as_row() if hasattr(row, "as_row") else row for row in rows]
    names = set(schema.names)
    for row in rows:
        for key in row:
            if key not in names and key != "model" and (table, key) not in _warned:
                _warned.add((table, key))
                log.warning("results: column %r of table %s is not in the schema (v%d); dropped", key, table,
                            SCHEMA_VERSION)
    arrays = [pa.array([redact(coerce(row.get(f.name), f.type)) for row in rows], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def safe_name(text: Any, limit: int = 40) -> str:
    """`text` as one path component: letters, digits, _ . - (a planted '../x' stays one harmless name)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(text)).lstrip(".")[:limit] or "x"


def model_partition(model: str) -> str:
    """The partition value of a model: the name itself when it is a path-safe slug that fits; otherwise (a lost job's
    unvalidated name) a safe prefix and a hash of the whole name, which cannot merge with another name."""
    safe = safe_name(model, MODEL_NAME_MAX)
    if safe == model:
        return model
    return f"{safe[:MODEL_NAME_MAX - 13]}-{hashlib.sha1(str(model).encode()).hexdigest()[:12]}"


def check_writable(results_dir: str | os.PathLike) -> Path:
    """Create the results dir and prove a file can be written there; OutputError (one line) otherwise."""
    root = Path(results_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"")
        probe.unlink()
        remove_stale_temps(root)  # the temp files of writers killed mid-write (kill -9 during a trace)
    except OSError as exc:
        raise OutputError(f"results_dir {str(root)!r} is not writable ({exc.strerror or exc}); "
                          "set results_dir=<a writable directory>") from None
    return root


def _part(results_dir: str | os.PathLike, table: str, model: str, config_hash: str | None, run_id: str) -> Path:
    directory = Path(results_dir) / f"table={table}" / f"model={model_partition(redact(model))}"
    name = f"part-{(config_hash or 'nohash')[:12]}-{run_id[:12]}-{safe_name(socket.gethostname())}-{os.getpid()}.parquet"
    return directory / name


def write_part(results_dir: str | os.PathLike, table: str, model: str, rows: list[dict[str, Any]],
               config_hash: str | None, run_id: str) -> Path | None:
    """Write one part file atomically (dot-prefixed temp file + os.replace). Returns its path (None when no rows)."""
    if not rows:
        return None
    import pyarrow.parquet as pq

    data = to_arrow(table, rows)
    path = _part(results_dir, table, model, config_hash, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write results to {path.parent} ({exc.strerror or exc})") from None
    return _written(run_id, table, write_atomic(path, lambda tmp: pq.write_table(data, tmp), "results"))


# the part files each run id of this process wrote (a failed job removes its own: only its `failed` row stays)
_parts_by_run: dict[str, list[Path]] = {}


def _written(run_id: str, table: str, path: Path) -> Path:
    if table != "runs":
        _parts_by_run.setdefault(run_id, []).append(path)
    return path


def keep_parts(run_id: str) -> None:
    """The job of `run_id` ended ok: its parts stay (and are no longer tracked)."""
    _parts_by_run.pop(run_id, None)


def remove_parts(run_id: str) -> None:
    """Remove the table parts (not runs rows) this process wrote for `run_id`: a job that fails after writing some
    (a trace, the analysis tables) leaves no rows that its runs row does not account for."""
    for path in _parts_by_run.pop(run_id, []):
        with contextlib.suppress(OSError):
            path.unlink()


class StreamedPart:
    """One part file written in row groups as they come (a table too large to hold, such as `trace`), zstd; it
    appears under its name only at close() (the temp file is dot-prefixed: readers skip it), abort() removes it."""

    def __init__(self, results_dir: str | os.PathLike, table: str, model: str, config_hash: str | None, run_id: str):
        self.path = _part(results_dir, table, model, config_hash, run_id)
        self.run_id, self.table = run_id, table
        self.tmp = temp_path(self.path)  # unique, naming this writer: a killed writer's is removed later
        self.schema = SCHEMAS[table]
        self.writer = None
        self.rows = 0

    def write(self, data: pa.Table) -> None:
        import pyarrow.parquet as pq

        try:
            if self.writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
            self.writer.write_table(_redact_table(data.cast(self.schema)))
        except OSError as exc:
            raise OutputError(f"cannot write results to {self.path.parent} ({exc.strerror or exc})") from None
        self.rows += data.num_rows

    def close(self) -> Path | None:
        if self.writer is None:
            return None
        self.writer.close()
        self.writer = None
        os.replace(self.tmp, self.path)
        return _written(self.run_id, self.table, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.writer = None
        with contextlib.suppress(OSError):
            self.tmp.unlink()


def nullable_types(arrow_type: pa.DataType):
    """pyarrow -> pandas types for to_pandas(types_mapper=): integer columns stay integers (pandas' nullable Int32 /
    Int64) instead of turning into float64 wherever a value is missing."""
    import pandas as pd

    return {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}.get(arrow_type)


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
        print(f"runner: warning: skipping unreadable results file {path} ({one_line(exc, 160)}); "
              "delete it or move it out of the results dir", file=sys.stderr, flush=True)


def sweep_id_for(sweep_dir: str | os.PathLike) -> str:
    """Stable id of a sweep: a hash of its absolute directory (known to the launcher and to every job)."""
    return hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]


def default_results_dir() -> Path:
    """Where `python -m runner` writes by default: ${out_root}/results, out_root = $RUNNER_OUT or outputs."""
    return Path(os.environ.get("RUNNER_OUT") or "outputs") / "results"


def load(table: str = "runs", sweep: str | os.PathLike = "latest", results_dir: str | os.PathLike | None = None,
         filter: Any = None):
    """Rows of one sweep (or one single run) as a pandas DataFrame: each job's latest complete result (one runs row
    per job, a resumed `skipped` one with the metrics of the run it reused; the other tables' rows of that result,
    under the job's own run_id).

    table: runs | layers | experts | tasks, or summary (a sweep's summary.parquet: one row per job, its latest attempt).
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
    if index.empty:  # every runs part unreadable (each named on stderr) or none written yet
        raise ResultsNotFound(f"no readable runs rows in {root}: run `python -m runner` first, or move the "
                              "unreadable files named above out of the results dir")
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
    jobs = latest_per_job(read_table(root, "runs", filter=selected),
                          lambda ids: read_table(root, "runs", filter=ds.field("run_id").isin(ids)))
    if table == "runs":
        if filter is not None:  # the caller's filter, on the rows as returned (a resumed job's reused metrics)
            jobs = jobs[jobs["run_id"].isin(read_table(root, "runs", filter=selected & filter)["run_id"])]
        return _ordered(jobs, "job_num", "timestamp")
    return _ordered(rows_of_jobs(root, table, jobs, filter), "job_num", "timestamp")


def data_run_ids(jobs) -> list:
    """Per runs row, the run id whose rows hold the job's data: a resumed (`skipped`) job's is the reused run's."""
    return list(jobs["run_id"].where(jobs["status"] != "skipped", jobs["resumed_from"]))


def rows_of_jobs(root: str | os.PathLike, table: str, jobs, filter: Any = None, with_files: bool = False):
    """The rows of `table` holding these jobs' (runs rows) data, each under its job's own run_id (a resumed job's
    are the reused run's rows); with_files: plus `__filename`, the part file of each row."""
    import pyarrow.dataset as ds

    data_ids = data_run_ids(jobs)
    ids = list(dict.fromkeys(str(i) for i in data_ids if isinstance(i, str)))
    wanted = ds.field("run_id").isin(ids)
    columns = [*full_schema(table).names, "__filename"] if with_files else None
    frame = read_table(root, table, filter=wanted if filter is None else wanted & filter, columns=columns)
    alias = {data: own for own, data in zip(jobs["run_id"], data_ids) if isinstance(data, str) and data != own}
    if alias and len(frame):
        frame = frame.assign(run_id=frame["run_id"].replace(alias))
    return frame



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


def rows_from_frame(frame, keys: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for record in frame.to_dict("records"):
        yield {**keys, **record}
