"""The results: tidy parquet tables, one typed record per table.

    records.py    RunRecord, LayerRecord, ExpertRecord, TaskRecord: the columns, their types and meanings; SCHEMAS from them
    columns.py    how a record's fields become arrow columns (types, meanings, value coercion)
    io.py         atomic part-file writes, reading tables (skipping corrupt files), load(table, sweep=...)
    summaries.py  one job's printed summary; a sweep's summary table (resumed jobs filled in) and its rendering
    docs.py       the column tables of docs/results.md, generated from the records

`from runner import results; results.load("runs")` and the names below are the public surface (docs/results.md).
"""
from .columns import coerce
from .io import (check_writable, default_results_dir, find_ok, load, nullable_types, read_table,
                 readable_parts, remove_parts, rows_from_frame, sweep_id_for, to_arrow, write_part, StreamedPart)
from .records import (KEY_COLUMNS, PARTITION, RECORDS, SCHEMA_VERSION, SCHEMAS, TABLES, ExpertRecord, KeyColumns,
                      LayerRecord, RunRecord, TaskRecord, full_schema, new_run_id)
from .summaries import combine, fill_resumed, job_summary, render, skip_summary, sweep_runs, swept_keys

__all__ = [
    "KEY_COLUMNS", "PARTITION", "RECORDS", "SCHEMAS", "SCHEMA_VERSION", "TABLES", "ExpertRecord", "KeyColumns",
    "LayerRecord", "RunRecord", "TaskRecord", "check_writable", "coerce", "combine", "default_results_dir", "fill_resumed",
    "find_ok", "full_schema", "job_summary", "load", "new_run_id", "nullable_types", "read_table", "readable_parts",
    "remove_parts", "render", "rows_from_frame", "skip_summary", "StreamedPart", "sweep_id_for", "sweep_runs", "swept_keys", "to_arrow", "write_part",
]
