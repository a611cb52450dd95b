"""Results that are missing, truncated or hold impossible values: one line (or one warning naming the file), never a
traceback, and nothing written for a job that was refused."""
from __future__ import annotations

import pytest

from helpers.jobs import run_job, table
from runner import results
from runner.errors import ResultsNotFound

SMALL = ("max_batches=1", "seq_len=32")


def truncate_runs(results_dir):
    for part in (results_dir / "table=runs").rglob("*.parquet"):
        part.write_bytes(part.read_bytes()[:100])


def test_placement_from_naming_nothing_is_refused_before_the_model_and_the_trace(tmp_path):
    with pytest.raises(SystemExit, match="analysis.placement_from=no_such_sweep: no results in"):
        run_job(tmp_path, "analysis=full", "analysis.placement_from=no_such_sweep", "trace.enabled=true", *SMALL)
    assert run_job(tmp_path, *SMALL)["status"] == "ok"  # now the results dir exists, but holds no such sweep
    with pytest.raises(SystemExit, match="analysis.placement_from=no_such_sweep: no sweep or run 'no_such_sweep'"):
        run_job(tmp_path, "analysis=full", "analysis.placement_from=no_such_sweep", "trace.enabled=true", *SMALL)
    assert not (tmp_path / "results" / "table=trace").exists()


def test_truncated_runs_parts_are_results_not_found(tmp_path, capsys):
    other = tmp_path / "other"
    assert run_job(other, *SMALL)["status"] == "ok"
    truncate_runs(other / "results")
    with pytest.raises(ResultsNotFound, match="no readable runs rows in"):
        results.load("runs", results_dir=other / "results")
    with pytest.raises(SystemExit, match=f"analysis.placement_from={other / 'results'}: no readable runs rows in"):
        run_job(tmp_path, "analysis=full", f"analysis.placement_from={other / 'results'}", *SMALL)
    assert "skipping unreadable results file" in capsys.readouterr().err


def test_a_part_with_impossible_expert_ids_is_named_and_skipped_by_the_report(tmp_path, capsys):
    from runner.report.__main__ import main as report

    assert run_job(tmp_path, "analysis=full", *SMALL)["status"] == "ok"
    coactivation = table(tmp_path, "coactivation")
    bad = coactivation.iloc[0].to_dict()
    bad.update(expert_a=99)
    path = results.write_part(tmp_path / "results", "coactivation", "olmoe_tiny", [bad], bad["config_hash"],
                              "f" * 32)
    assert report([str(tmp_path / "results"), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert f"report: warning: skipping {path}: coactivation row with an expert id outside the 8 experts" in err
    assert "expert_a=99" in err
    assert (tmp_path / "report" / "olmoe_tiny-coactivation.png").is_file()


def test_a_job_failing_after_its_trace_leaves_only_its_failed_row(tmp_path):
    """The trace is written while the batches run; the non-finite check fails the job after it."""
    with pytest.raises(SystemExit, match="non-finite router scores"):
        run_job(tmp_path, "+model.config.rms_norm_eps=-1.0", "trace.enabled=true", "analysis=full", "on_error=record",
                *SMALL)
    assert list((tmp_path / "results").rglob("table=trace/**/*.parquet")) == []
    runs = table(tmp_path, "runs")
    assert list(runs["status"]) == ["failed"]
