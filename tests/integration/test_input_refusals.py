"""Robustness round 2 (issue 13): bad model configs, seeds, data files, results files and baselines end in one clear
line and a non-zero exit (or a named warning), never a traceback, lost results or a silently wrong number. Jobs run
in-process; the streaming data readers (item 18) are tests/unit/test_data_readers.py, a run on 50 MB files through
the CLI tests/e2e/test_cli_refusals.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers.jobs import compose_job, run_job, table
from runner import baseline as bl
from runner.job import models
from runner import results
from runner.cli.callbacks import SweepSummary

SMALL = ("max_batches=2", "seq_len=64")
ERROR_PREFIX = "runner: error: "


def refused(tmp_path: Path, *overrides: str) -> str:
    """The one line a single run exits with; nothing is loaded for errors found in the config."""
    with pytest.raises(SystemExit) as info:
        run_job(tmp_path, *overrides)
    message = str(info.value.code)
    assert message.startswith(ERROR_PREFIX) and "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------------------------------
# model config, seed, integer ranges (items 3, 4, 5, 13, 15)
@pytest.mark.parametrize("overrides, text", [
    (["model.config.vocab_size=10"], "model.config.vocab_size: 10 is smaller than the byte tokenizer's 259 ids"),
    (["model.config.vocab_size=300", "model.config.pad_token_id=400"],
     "model.config.pad_token_id: 400 is outside the vocabulary (vocab_size=300)"),
    (["seed=18446744073709551616"], "seed: 18446744073709551616 is out of range"),
    (["seed=-18446744073709551616"], "seed: -18446744073709551616 is out of range"),
    (["batch_size=4294967296"], "batch_size: 4294967296 is out of range"),
    (["model.config.num_experts_per_tok=99"], "model.config.num_experts_per_tok: 99 exceeds the 8 experts"),
    (["seq_len=2048"], "seq_len: seq_len=2048 exceeds the model's max_position_embeddings=1024; use seq_len<=1024"),
    (["seq_len=1000", "decode_tokens=30"], "seq_len=1000 + decode_tokens=30 exceeds the model's "
                                            "max_position_embeddings=1024; use seq_len<=994"),
    (["dims.override.top_k=5"], "dims.override.top_k: 5 would relabel the top-k but not change the routing; "
                                "set topk=5 instead"),
])
def test_bad_model_config_is_refused_before_loading(tmp_path, overrides, text):
    models.clear_cache()
    assert text in refused(tmp_path, *overrides)
    assert not models._CACHE  # refused before the model was built
    assert set(table(tmp_path, "runs")["status"]) <= set()  # a single run records nothing for a refused config


def test_seed_at_the_int64_limit_still_runs(tmp_path):
    out = run_job(tmp_path, f"seed={2**63 - 1}", "max_batches=1", "seq_len=32", "batch_size=2")
    assert out["status"] == "ok"
    assert table(tmp_path, "runs")["seed"].tolist() == [2**63 - 1]


def test_seq_len_up_to_the_position_table_runs(tmp_path):
    run_job(tmp_path, "seq_len=1024", "max_batches=1", "batch_size=1")
    row = table(tmp_path, "runs").iloc[0]
    assert row["status"] == "ok" and row["tokens"] == 1024


# ---------------------------------------------------------------------------------------------------------------------
# dimension overrides that contradict the weights (item 14)
@pytest.mark.parametrize("override, value, module", [("num_experts", 3, 8), ("expert_dim", 999, 32)])
def test_override_contradicting_the_weights_warns_and_marks_rows(tmp_path, capfd, override, value, module):
    run_job(tmp_path, f"dims.override.{override}={value}", "max_batches=1", "seq_len=32", "batch_size=2")
    err = capfd.readouterr().err
    expected = f"{override}: user override = {value} but the module says {module}"
    lines = [line for line in err.splitlines() if line.startswith("runner: warning:")]
    assert len(lines) == 1 and expected in lines[0] and "MoE layers 0-1" in lines[0], err
    layers = table(tmp_path, "layers")
    assert (layers[override] == value).all() and (layers[f"{override}_source"] == "override").all()
    assert layers["dims_warning"].str.contains(expected, regex=False).all()


def test_rows_without_contradictions_have_no_dims_warning(tmp_path):
    run_job(tmp_path, "dims.override.expert_dim=32", "max_batches=1", "seq_len=32", "batch_size=2")
    layers = table(tmp_path, "layers")
    assert layers["dims_warning"].isna().all() and (layers["expert_dim_source"] == "override").all()


# ---------------------------------------------------------------------------------------------------------------------
# data files (items 6, 7)
@pytest.mark.parametrize("name, content", [
    ("empty.txt", ""), ("blank.txt", "  \n\n\t \n"), ("empty.jsonl", ""), ("blank.jsonl", "\n   \n"),
    ("blank_field.jsonl", '{"text": "   "}\n{"text": ""}\n'), ("empty_list.json", "[]"),
])
def test_empty_or_blank_file_fails_before_the_model_loads(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    models.clear_cache()
    message = refused(tmp_path, "dataset=local", f"dataset.path={path}")
    assert f"dataset.path {str(path)!r} has no text (empty or whitespace only" in message
    assert not models._CACHE


@pytest.mark.parametrize("name, content, where", [
    ("deep.jsonl", '{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", "deep.jsonl:2"),
    ("deep.json", '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "deep.json"),
])
def test_deeply_nested_json_is_one_line(tmp_path, name, content, where):
    path = tmp_path / name
    path.write_text(content)
    message = refused(tmp_path, "dataset=local", f"dataset.path={path}")
    assert f"{where}: JSON nested too deeply to read" in message


# ---------------------------------------------------------------------------------------------------------------------
# corrupt part files in results_dir (item 8)
def corrupt_part(results_dir: Path) -> Path:
    bad = results_dir / "table=runs" / "model=olmoe_tiny" / "part-truncated.parquet"
    bad.write_bytes(b"PAR1" + b"\0" * 100)  # a copy cut off before its footer
    return bad


def test_resume_skips_a_corrupt_part_file_with_one_line(tmp_path, capfd):
    first = run_job(tmp_path, *SMALL)
    bad = corrupt_part(tmp_path / "results")
    capfd.readouterr()
    again = run_job(tmp_path, *SMALL, "resume=true")
    assert again["status"] == "skipped" and again["resumed_from"] == first["run_id"]
    warned = [line for line in capfd.readouterr().err.splitlines() if str(bad) in line]
    assert len(warned) == 1 and warned[0].startswith("runner: warning: skipping unreadable results file")
    runs = results.read_table(tmp_path / "results", "runs")
    assert sorted(runs["status"]) == ["ok", "skipped"]


def test_sweep_summary_runs_past_a_corrupt_file_and_counts_failures(tmp_path):
    root = tmp_path / "results"
    for num, status in enumerate(["ok", "failed"]):
        row = dict(schema_version=1, run_id=f"run{num}", sweep_id="s1", job_num=num, status=status,
                   timestamp=f"2026-01-01T00:00:0{num}Z", overrides="[]", error="boom" if status == "failed" else None)
        import pandas as pd

        row["timestamp"] = pd.Timestamp(row["timestamp"])
        results.write_part(root, "runs", "olmoe_tiny", [row], "h", row["run_id"])
    corrupt_part(root)
    state = dict(sweep_dir=str(tmp_path / "sweep"), sweep_id="s1", results_dir=str(root), planned=[[], []],
                 model="olmoe_tiny", defaults={}, done=False)
    (tmp_path / "sweep").mkdir()
    failed = SweepSummary(print_summary=False).finish(state)
    assert failed == 1  # the sweep still exits 1
    import pandas as pd

    summary = pd.read_parquet(tmp_path / "sweep" / "summary.parquet")
    assert list(summary["status"]) == ["ok", "failed"]


# ---------------------------------------------------------------------------------------------------------------------
# the baseline file (item 11)
def test_baseline_value_that_is_not_a_number_is_corrupt_exit_2(tmp_path, capsys):
    path = tmp_path / "base.csv"
    path.write_text(",".join(bl.COLUMNS) + "\nolmoe|params_total,olmoe,,,,params_total,,abc,\n")
    code = bl.main(["check", "--file", str(path)])
    out, err = capsys.readouterr()
    assert code == bl.EXIT_USAGE and out == ""
    assert err.count("\n") == 1 and "value 'abc' of metric 'params_total' is not a number" in err, err
    # status is the one word-valued metric
    path.write_text(",".join(bl.COLUMNS) + "\nolmoe|k=2|router|builtin|status,olmoe,2,router,builtin,status,,ok,\n")
    assert [e.value for e in bl.load(path)] == ["ok"]


# ---------------------------------------------------------------------------------------------------------------------
# a checkpoint's own config: the same refusals, once loaded
@pytest.mark.parametrize("change, text", [
    (dict(max_position_embeddings=64), "seq_len: seq_len=128 exceeds the model's max_position_embeddings=64"),
    (dict(num_experts_per_tok=9), "model.config.num_experts_per_tok: top-k 9 exceeds the 8 experts of layer 0"),
])
def test_a_checkpoints_own_config_is_checked_once_loaded(tmp_path, change, text):
    """A checkpoint brings its own config (the model yaml's model.config is not applied): the same refusals, after
    loading."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = compose_job(tmp_path)
    config = AutoConfig.for_model("olmoe", **{**dict(cfg.model.config), **change})
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "ckpt")
    message = refused(tmp_path, "model.weights=pretrained", f"model.hf_id={tmp_path / 'ckpt'}", "max_batches=1")
    assert text in message
