"""Robustness round 2 (issue 13): bad model configs, seeds, data files, results files and baselines end in one clear
line and a non-zero exit (or a named warning), never a traceback, lost results or a silently wrong number."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT
from helpers.cli import cli_env
from helpers.jobs import compose_job, run_job, table
from runner import baseline as bl
from runner import data, models, results
from runner.callbacks import SweepSummary
from runner.schema import DatasetConfig, DatasetKind
from runner.tokenizer import byte_tokenizer

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
    path.write_text(",".join(bl.COLUMNS) + "\nolmoe|k=2|topk|builtin|status,olmoe,2,topk,builtin,status,,ok,\n")
    assert [e.value for e in bl.load(path)] == ["ok"]


# ---------------------------------------------------------------------------------------------------------------------
# streaming tokenization (item 18)
def test_capped_tokenization_gives_the_leading_blocks_of_the_whole_stream():
    tok = byte_tokenizer()
    docs = data.load_documents(DatasetConfig())
    whole = data.tokenize(docs, tok, 128, "builtin")
    for cap in (128, 128 * 8, 128 * 8 * 3, 10**9):
        capped = data.tokenize(docs, tok, 128, "builtin", max_tokens=cap)
        assert capped.num_blocks == min(whole.num_blocks, cap // 128)
        assert capped.ids.equal(whole.ids[: capped.num_blocks])
    long_doc = ["the quick brown fox jumps over the lazy dog. " * 20_000, "tail"]
    whole = data.tokenize(long_doc, tok, 64, "long")
    capped = data.tokenize(long_doc, tok, 64, "long", max_tokens=64 * 4)
    assert capped.num_blocks == 4 and capped.ids.equal(whole.ids[:4])


def test_peak_memory_does_not_grow_with_the_file(tmp_path):
    """max_batches=1 on 50 MB files of every streamed form (one jsonl line, 40k jsonl lines, a JSON list, text
    paragraphs, parquet rows) stays within +200 MB of the same job on a 1 MB file (one process, the small job first:
    ru_maxrss only grows, so a job's peak minus the first's bounds what its file added)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    word, big = "lorem ipsum dolor sit amet ", 50 << 20
    line = word * ((big // 40_000) // len(word))
    files = [tmp_path / "small.jsonl", tmp_path / "one_line.jsonl", tmp_path / "lines.jsonl", tmp_path / "list.json",
             tmp_path / "paragraphs.txt", tmp_path / "rows.parquet"]
    files[0].write_text(json.dumps({"text": word * ((1 << 20) // len(word))}) + "\n")
    files[1].write_text(json.dumps({"text": word * (big // len(word))}) + "\n")
    files[2].write_text("".join(json.dumps({"text": line}) + "\n" for _ in range(40_000)))
    files[3].write_text("[" + ",\n".join(json.dumps({"text": line}) for _ in range(40_000)) + "]")
    files[4].write_text("".join(line + "\n\n" for _ in range(40_000)))
    pq.write_table(pa.table({"text": [line] * 40_000}), files[5], row_group_size=1000)
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "-m", f"out_root={tmp_path}", f"hydra.sweep.dir={sweep}", "dataset=local",
         f"dataset.path={','.join(map(str, files))}", "max_batches=1", "batch_size=2", "seq_len=64"],
        cwd=ROOT, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = results.read_table(tmp_path / "results", "runs").sort_values("job_num")
    assert list(runs["status"]) == ["ok"] * 6 and list(runs["tokens"]) == [128] * 6
    # the documents read: the few that fill the blocks (tokenized in groups of ~16k characters), of 40,000
    assert runs["documents"].max() < 20, list(runs["documents"])
    small, *bigs = (int(v) for v in runs["peak_rss_bytes"])
    assert all(b - small < 200 << 20 for b in bigs), (small, bigs)


@pytest.mark.parametrize("spec", ["[:3]", "[2:5]", "[-3:]", "[:-2]", "[-4:-1]", "[:50%]", "[25%:75%]", "[-25%:]",
                                  "[5:2]", "[:100]", "[0:]"])
def test_streamed_slices_are_python_slices(tmp_path, spec):
    path = tmp_path / "ten.jsonl"
    docs = [f"document {i}" for i in range(10)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    expected = eval(f"docs{spec.replace('%', '')}") if "%" not in spec else None
    if expected is None:  # datasets' percent slices: round(n * p / 100)
        start, stop = (None if not t else round(10 * int(t[:-1]) / 100) for t in spec[1:-1].split(":"))
        expected = docs[start:stop]
    cfg = DatasetConfig(kind=DatasetKind.local, path=str(path), slice=spec)
    if not expected:
        with pytest.raises(data.DataError, match=r"is empty \(10 documents available\)"):
            data.load_documents(cfg)
        return
    documents = data.load_documents(cfg)
    assert list(documents) == expected and list(documents) == expected  # every pass streams the file again
    assert documents.read == len(expected)


def test_json_lists_are_decoded_an_item_at_a_time(tmp_path, monkeypatch):
    """A chunk far smaller than an item (and numbers cut at a chunk boundary) decodes exactly as json.loads does."""
    records = [{"text": "x" * n, "n": 10 ** (n % 12), "nested": {"a": [1, 2.5, None, True]}} for n in range(1, 60)]
    path = tmp_path / "list.json"
    path.write_text("  [\n" + " ,\n ".join(json.dumps(r) for r in records) + "\n]  \n")
    for chunk in (1, 3, 7, 64, 1 << 20):
        monkeypatch.setattr(data, "_CHUNK", chunk)
        assert list(data.load_documents(DatasetConfig(kind=DatasetKind.local, path=str(path)))) == [r["text"] for r in records]


@pytest.mark.parametrize("content, text", [
    ('[{"text": "a"} {"text": "b"}]', "malformed JSON (expected ',' or ']' after item 0)"),
    ('[{"text": "a"}, {"text": "b"', "malformed JSON (item 1: "),
    ('[{"text": "a"},', "malformed JSON (the list is not closed)"),
    ('[{"text": "a"}] {}', "malformed JSON (extra data after the list)"),
    ('[{"text": "a"}, 7]', "list.json[1]: expected a JSON object with a 'text' field, got int"),
    ('"text"', "expected a JSON list of objects with a 'text' field"),
])
def test_malformed_json_lists_are_one_line(tmp_path, monkeypatch, content, text):
    monkeypatch.setattr(data, "_CHUNK", 4)
    path = tmp_path / "list.json"
    path.write_text(content)
    with pytest.raises(data.DataError) as info:
        list(data.load_documents(DatasetConfig(kind=DatasetKind.local, path=str(path))))
    assert text in str(info.value) and "\n" not in str(info.value)


def test_a_capped_run_reads_only_the_documents_it_needs(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("".join(f"paragraph {i} " * 20 + "\n\n" for i in range(5000)))
    documents = data.load_documents(DatasetConfig(kind=DatasetKind.local, path=str(path)))
    blocks = data.tokenize(documents, byte_tokenizer(), 64, "many", max_tokens=64 * 8)
    assert blocks.num_blocks == 8 and blocks.documents == documents.read < 100  # of 5,000 (grouped by ~16k characters)


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
