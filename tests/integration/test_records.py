"""The typed results records (runner/results/records.py): the schemas generated from them, docs/results.md generated
from them, RunRecord as a job fills it, the one resumed-row fill that the sweep summary and the baseline share, and
the small helpers the results and the baseline use (errors.one_line, threads.intra_op_threads)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Optional

import pandas as pd
import pyarrow as pa
import pytest

from handlers.base import DIMENSIONS
from runner import baseline as bl
from runner import results
from runner.results import columns, docs, records
from runner.job.threads import intra_op_threads

from helpers import ROOT  # noqa: E402
DOC = ROOT / "docs" / "results.md"

# schema_version -> sha256 of the tables' file schemas as pyarrow prints them: stored results depend on them, so a
# changed column (name, type or order) must come with a new SCHEMA_VERSION (and a new line here)
FINGERPRINTS = {1: "a08382542b524ae7a48418ada9023b85a15718b2447824c31248f80d754b814e",
                # 2: runs.slurm_job_id, layers drop rates, margin, jaccard
                2: "b32691a661df40d4ba6e0f9dfdf735092ea480b192db652d1e4682e501118994",
                # 3: the analysis tables (coactivation, transitions, placement, trace), the tasks table, the whole-model cost
                # (FLOPs, bytes, S-MFU/S-MBU, params_active_nonembedding, layers param_bytes), layers.device,
                # runs.memory_by_device, their runs columns
                3: "2a79ac46180c11e36615b20b91dbd12866313aa2cc57c15bb7ce9adc97e43cc6",
                # 4: the FLOPs guard (layers.flops_warning, runs.flops_warning, runs.model_flops_warning), the cache,
                # locality and ablation tables, layers.lookahead_recall, the standard balance family, the random-routing
                # baselines, calibration columns, confidence intervals, the speed with the profiler paused
                4: "647135d5261387e918d4c6544e66254f5a564b9a119cda40e4ce6c51539aebd1"}


def fingerprint() -> str:
    text = "\n".join(f"{name}\n{results.SCHEMAS[name].to_string(show_schema_metadata=False)}"
                     for name in results.TABLES)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# the schemas come from the records
def test_each_table_has_a_record_and_its_schema_is_generated_from_it():
    from runner.results.analysis_records import (AblationRecord, CacheRecord, CoactivationRecord, LocalityRecord,
                                                 PlacementRecord, TraceRecord, TransitionRecord)

    assert results.TABLES == ("runs", "layers", "experts", "coactivation", "transitions", "placement", "trace", "cache",
                              "locality", "ablation", "tasks")
    assert results.RECORDS == {"runs": results.RunRecord, "layers": results.LayerRecord,
                               "experts": results.ExpertRecord, "coactivation": CoactivationRecord,
                               "transitions": TransitionRecord, "placement": PlacementRecord, "trace": TraceRecord,
                               "cache": CacheRecord, "locality": LocalityRecord, "ablation": AblationRecord,
                               "tasks": results.TaskRecord}
    for table, record in results.RECORDS.items():
        schema = results.SCHEMAS[table]
        assert schema.names == [f.name for f in dataclasses.fields(record)], table
        assert schema.names[:len(results.KEY_COLUMNS)] == list(results.KEY_COLUMNS), table  # join keys first
        assert "model" not in schema.names and results.full_schema(table).names == [*schema.names, "model"]
        assert all(f.nullable for f in schema), table


def test_the_schema_of_each_version_is_unchanged():
    assert results.SCHEMA_VERSION in FINGERPRINTS, "a new SCHEMA_VERSION needs its fingerprint here"
    assert fingerprint() == FINGERPRINTS[results.SCHEMA_VERSION], (
        "the results columns changed: stored results, docs/results.md and readers depend on them; bump "
        "SCHEMA_VERSION (runner/results/records.py) and add its fingerprint to FINGERPRINTS")


def test_annotations_map_to_arrow_types():
    @dataclasses.dataclass
    class Sample:
        a: columns.String = columns.col("text")
        b: columns.Int32 = columns.col("small integer")
        c: columns.Int64 = columns.col("integer")
        d: columns.Double = columns.col("number")
        e: columns.Bool = columns.col("flag")
        f: columns.Timestamp = columns.col("time")
        g: columns.Int64List = columns.col("histogram")

    assert columns.schema_of(Sample) == pa.schema([
        ("a", pa.string()), ("b", pa.int32()), ("c", pa.int64()), ("d", pa.float64()), ("e", pa.bool_()),
        ("f", pa.timestamp("us", tz="UTC")), ("g", pa.list_(pa.int64()))])
    assert columns.meanings(Sample)[1] == ("b", "int32", "small integer")

    @dataclasses.dataclass
    class Unknown:
        x: Optional[complex] = columns.col("no arrow type for this")

    with pytest.raises(TypeError, match="no arrow type"):
        columns.schema_of(Unknown)


def test_layer_dimension_columns_follow_handlers_dimensions():
    names = results.SCHEMAS["layers"].names
    start = names.index("dims_warning") + 1
    expected = []
    for dim in DIMENSIONS:
        column = "default_top_k" if dim == "top_k" else dim  # `top_k` is the live k
        expected += [column, f"{column}_source", f"{column}_detail"]
    assert names[start:] == expected
    assert set(records.DIMENSION_MEANINGS) == set(DIMENSIONS), "every dimension has its meaning in records.py"


# ---------------------------------------------------------------------------------------------------------------------
# docs/results.md
def doc_tables(text: str) -> dict[str, list[tuple[str, str, str]]]:
    """(column, type, meaning) rows of the table under each `### <table>` heading."""
    out = {}
    for table in results.TABLES:
        section = text.split(f"\n### {table}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        out[table] = re.findall(r"^\| `([^`]+)` \| ([^|]+?) \| (.*) \|$", section, flags=re.M)
    return out


def test_docs_tables_list_the_generated_columns_and_types():
    tables = doc_tables(DOC.read_text(encoding="utf-8"))
    for table, rows in tables.items():
        schema = results.SCHEMAS[table]  # the file columns: `model` is the partition, described in the text
        assert [name for name, _, _ in rows] == schema.names, table
        assert [typ for _, typ, _ in rows] == [str(t) for t in schema.types], table
        assert all(meaning.strip() for _, _, meaning in rows), table


def test_docs_tables_are_generated_from_the_records(capsys):
    text = DOC.read_text(encoding="utf-8")
    assert docs.updated(text) == text, "docs/results.md is out of date: run `python -m runner.results.docs`"
    assert docs.main(["--check"]) == 0
    rows = doc_tables(text)
    assert rows["runs"][1] == ("run_id", "string", results.RunRecord.__dataclass_fields__["run_id"].metadata["meaning"])
    assert rows["layers"][1] == ("run_id", "string", "the job's `run_id`")  # a join key, as the child table reads it


def test_a_stale_docs_table_is_found_and_rewritten():
    text = DOC.read_text(encoding="utf-8")
    stale = text.replace("| `ppl` | double | exp(loss) |", "| `ppl` | double | perplexity |")
    assert stale != text and docs.updated(stale) == text


# ---------------------------------------------------------------------------------------------------------------------
# RunRecord
def test_run_record_refuses_unknown_columns():
    row = results.RunRecord(run_id="r1")
    assert row.schema_version == results.SCHEMA_VERSION and row.loss is None
    with pytest.raises(AttributeError):
        row.los = 1.0  # a typo is an error, not a new key
    with pytest.raises(AttributeError, match="runs has no column 'lost'"):
        row.update(lost=1.0)
    row.update(loss=2.5, tokens=10)
    assert row.loss == 2.5 and list(row.as_row()) == results.SCHEMAS["runs"].names
    assert list(row.keys()) == list(results.KEY_COLUMNS) and row.keys()["run_id"] == "r1"


def test_run_record_endings_fill_status_error_and_provenance():
    failed = results.RunRecord(run_id="r1").ended("failed", 1.5, error="boom", error_type="ValueError")
    assert (failed.status, failed.error, failed.error_type, failed.wall_s) == ("failed", "boom", "ValueError", 1.5)
    assert failed.host and failed.pid and failed.python_version
    prior = pd.Series({"run_id": "r0", "topk": 4, "selector": "router"})
    skipped = results.RunRecord(run_id="r2", topk=None).skipped(prior, wall_s=0.1)
    assert (skipped.status, skipped.resumed_from, skipped.topk, skipped.selector) == ("skipped", "r0", 4, "router")


def test_a_record_is_written_through_the_generated_schema(tmp_path):
    row = results.RunRecord(run_id="r1", timestamp=dt.datetime.now(dt.timezone.utc), status="ok", topk=2, loss=1.0,
                            tokens=64, git_dirty=False)
    results.write_part(tmp_path, "runs", "m", [row], "h", row.run_id)
    back = results.read_table(tmp_path, "runs")
    assert list(back.columns) == results.full_schema("runs").names
    assert back.loc[0, "topk"] == 2 and str(back["topk"].dtype) == "Int32" and back.loc[0, "model"] == "m"


# ---------------------------------------------------------------------------------------------------------------------
# one resumed-row fill for the sweep summary and the baseline
def write_resumed(root: Path) -> None:
    """An ok run (loss 3.0) of an earlier sweep and a resumed job of sweep s2 that reused it."""
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    ok = results.RunRecord(run_id="old", sweep_id="s1", job_num=0, timestamp=t0, status="ok", topk=2, selector="router",
                           loss=3.0, flops_per_token_analytic=100.0, dataset_source="builtin", seq_len=64,
                           overrides='["topk=2"]', sweep_dir="/sweeps/1", job_dir="/sweeps/1/0")
    resumed = results.RunRecord(run_id="new", sweep_id="s2", job_num=0, timestamp=t0 + dt.timedelta(hours=1),
                                status="skipped", resumed_from="old", topk=2, selector="router",
                                overrides='["topk=2", "resume=true"]', sweep_dir="/sweeps/2", job_dir="/sweeps/2/0")
    for row in (ok, resumed):
        results.write_part(root, "runs", "olmoe_tiny", [row], "h", row.run_id)


def test_fill_resumed_takes_the_reused_metrics_and_keeps_the_jobs_identity(tmp_path):
    write_resumed(tmp_path)
    runs = results.read_table(tmp_path, "runs")
    filled = results.fill_resumed(runs)
    new = filled[filled["run_id"] == "new"].iloc[0]
    assert new["loss"] == 3.0 and new["flops_per_token_analytic"] == 100.0 and new["seq_len"] == 64  # reused
    for own in results.summaries.RESUMED_OWN:  # the resumed job's own
        assert new[own] == runs[runs["run_id"] == "new"].iloc[0][own], own
    assert (filled.dtypes == runs.dtypes).all() and len(filled) == len(runs)
    alone = results.fill_resumed(runs[runs["run_id"] == "new"])  # the reused run is not there: the row stays
    assert pd.isna(alone.iloc[0]["loss"])


def test_sweep_summary_and_baseline_fill_resumed_jobs_alike(tmp_path):
    write_resumed(tmp_path)
    summary = results.combine(results.sweep_runs(str(tmp_path), "s2"), str(tmp_path))
    gate = bl.read_runs(tmp_path)  # a results dir: every run, resumed ones filled
    from_gate = gate[gate["run_id"] == "new"].iloc[0]
    assert list(summary["run_id"]) == ["new"] and summary.iloc[0]["loss"] == from_gate["loss"] == 3.0
    assert summary.iloc[0]["status"] == from_gate["status"] == "skipped"
    entries = {e.key: e for e in bl.sweep_entries(gate)}
    assert entries["olmoe_tiny|k=2|router|builtin seq_len=64|status"].value == "ok"


# ---------------------------------------------------------------------------------------------------------------------
# helpers
def test_intra_op_threads_sets_and_restores():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with intra_op_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError
    assert torch.get_num_threads() == before
    with intra_op_threads(None):
        assert torch.get_num_threads() == before


def test_results_from_before_the_router_name_pin_under_router(tmp_path):
    """Rows written when the model's own routing was `selector=topk` give the same baseline keys as `router` rows."""
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    old = results.RunRecord(run_id="old", sweep_id="s1", job_num=0, timestamp=t0, status="ok", topk=2, selector="topk",
                            loss=3.0, dataset_source="builtin", seq_len=64, overrides='["topk=2"]')
    results.write_part(tmp_path, "runs", "olmoe_tiny", [old], "h", old.run_id)
    keys = {e.key for e in bl.sweep_entries(bl.read_runs(tmp_path))}
    assert "olmoe_tiny|k=2|router|builtin seq_len=64|loss" in keys and not any("|topk|" in k for k in keys)
