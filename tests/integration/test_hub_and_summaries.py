"""Issue 10 §2/§3: a newcomer's first hour, in-process. Hub probe, loading results, labels, summary, keys. Through the
CLI (unreachable hub, help, typos, logs): tests/e2e/test_cli_help_and_typos.py."""
from __future__ import annotations

import http.server
from pathlib import Path
import re
import threading

import pandas as pd
import pytest

from helpers import DATA, ROOT
from helpers.docs import DOC_FILES, README, doc_blocks
from helpers.jobs import compose_job, latest_run, run_job
from runner import results

SMALL = ("max_batches=1", "seq_len=64")


# -- §2: a hub that answers keeps the online path (an unreachable one: tests/e2e) --------------------------------------
def test_reachable_hub_keeps_the_online_path(monkeypatch):
    """A hub that answers (a local HTTP server here) is reachable: the runner goes online after a cache miss."""
    from huggingface_hub import constants

    from runner.job import hub

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub.reachable.__wrapped__() is True and constants.HF_HUB_OFFLINE is False
    finally:
        server.shutdown()


# -- §3.1: the printed run id is the stored one ---------------------------------------------------------------------------
def test_printed_run_id_filters_the_stored_rows(tmp_path, capsys):
    out = run_job(tmp_path, *SMALL)
    printed = re.search(r"\(run_id (\w+),", capsys.readouterr().out).group(1)
    runs = results.read_table(tmp_path / "results", "runs")
    assert printed == out["run_id"] and len(runs[runs["run_id"] == printed]) == 1


# -- §3.2 / §3.5 / §3.10: the documentation's snippets, run as written (loading ones on a real sweep) ---------------------
# ```python blocks of README.md and docs/*.md that no test runs, by (file, heading they sit under), and why
NOT_RUN = {("docs/profiler.md", "The profiler (library)"): "from_pretrained downloads allenai/OLMoE-1B-7B-0924 from the hub",
           ("docs/profiler.md", "torch.compile, CUDA graphs and phases"):
               "continues the library example above (its model and batch)",
           ("README.md", "Task accuracy (lm-evaluation-harness)"): "run by tests/integration/test_eval.py (eval=lm_eval)",
           ("docs/eval.md", "Results: `table=tasks`"): "run by tests/integration/test_eval.py (eval=lm_eval)"}
# the README's library example: a tiny random-weight model, run offline on its own below
LIBRARY = ("README.md", "The library")


def test_readme_library_example_runs_offline(capsys):
    """The README's library example as written: tiny OLMoE, kneedle, measured FLOPs; the model comes back untouched."""
    (code,) = [code for name, heading, code in doc_blocks("python") if (name, heading) == LIBRARY]
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.startswith("MoE scan: OlmoeForCausalLM") and "= 25,600 at k=2" in printed
    layers, experts, model = namespace["layers"], namespace["experts"], namespace["model"]
    assert list(layers["layer"]) == [0, 1] and list(layers["tokens"]) == [4 * 64] * 2 and len(experts) == 2 * 8
    assert layers["k_mean"].between(1, 4).all() and (layers["flops_measured"] == layers["flops"]).all()  # skipped
    assert all(layer.mlp.gate.top_k == 2 for layer in model.model.layers)  # detached: the model's own top-k again
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 180, f"README.md has {len(lines)} lines; move details to docs/"


def _github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file (lowercase, punctuation dropped, spaces -> '-')."""
    anchors: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in anchors:
                n += 1
                anchor = f"{slug}-{n}"
            anchors.add(anchor)
    return anchors


def test_relative_links_in_readme_and_docs_point_at_existing_files():
    broken = []
    for path in DOC_FILES:
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # no links inside code blocks
        text = re.sub(r"`[^`\n]*`", "", text)  # nor inside code spans
        for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            file, _, fragment = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(ROOT)}: ({target})"
            if not resolved.exists():
                broken.append(f"{where}: no such file")
            elif not resolved.is_relative_to(ROOT):
                broken.append(f"{where}: outside the repository")
            elif fragment and resolved.suffix == ".md" and fragment not in _github_anchors(resolved):
                broken.append(f"{where}: no heading with that anchor")
    assert not broken, "\n".join(broken)


def test_readme_loading_snippets_run_as_written(run_sweep, tmp_path, monkeypatch, capsys):
    from runner.errors import ResultsNotFound
    from runner.results import load

    monkeypatch.chdir(tmp_path)  # the snippets read the default outputs/results
    monkeypatch.delenv("RUNNER_OUT", raising=False)
    outputs = tmp_path / "outputs"
    with pytest.raises(ResultsNotFound, match="no results in outputs/results"):
        load("runs")
    assert run_job(outputs, "max_batches=1", "seq_len=32")["status"] == "ok"  # another seq_len in the same results_dir
    blocks = doc_blocks("python")
    assert set(NOT_RUN) | {LIBRARY} <= {(name, heading) for name, heading, _ in blocks}, \
        "NOT_RUN or LIBRARY names a (file, heading) the docs no longer have"
    loading = [(name, code) for name, heading, code in blocks if (name, heading) not in NOT_RUN and (name, heading) != LIBRARY]
    assert [name for name, _ in loading] == ["README.md", "docs/results.md"]
    namespace: dict = {}
    sweep_dir = outputs / "multirun" / "sweep"
    with run_sweep(outputs, "topk=1,2", *SMALL, name="multirun/sweep"):  # removed on exit
        for name, code in loading:
            exec(compile(code, str(ROOT / name), "exec"), namespace)
        assert list(load("runs", sweep=sweep_dir)["topk"]) == [1, 2]
    capsys.readouterr()
    runs, summary, everything = namespace["runs"], namespace["summary"], namespace["everything"]
    assert list(runs["topk"]) == [1, 2] and list(summary["topk"]) == [1, 2] and runs["sweep_id"].nunique() == 1
    assert len(everything) == 3 and len(namespace["layers"]) == 2 * 2
    for column in ("topk", "job_num", "tokens", "documents", "seq_len"):  # nullable integers, also in the summary
        assert str(runs[column].dtype) in ("Int32", "Int64") and runs[column].dtype == summary[column].dtype, column
    assert list(summary["job_num"]) == [0, 1] and pd.isna(everything["job_num"]).sum() == 1  # the single run's
    assert str(everything["job_num"].dtype) == "Int32" and str(everything["documents"].dtype) == "Int64"

    # the documented duckdb query keeps the two seq_len apart instead of averaging over them
    duckdb = pytest.importorskip("duckdb", exc_type=ModuleNotFoundError,
                                 reason="duckdb (pyproject's test extra) is not installed")
    (sql,) = [code for _, heading, code in doc_blocks("sql") if heading == "Loading results"]
    got = duckdb.sql(sql).df()
    at_k2 = got[(got["topk"] == 2) & (got["selector"] == "router")]
    assert sorted(at_k2["seq_len"]) == [32, 64] and list(at_k2["runs"]) == [1, 1]

    # latest = what ran last: now a single run; a sweep by directory or id; unknown ids fail with one line
    single = run_job(outputs, "max_batches=1", "seq_len=32", "topk=1")
    assert list(load("runs")["run_id"]) == [single["run_id"]] and len(load("summary")) == 1
    assert list(load("layers", sweep=runs["sweep_id"].iloc[0])["layer"]) == [0, 1, 0, 1]
    assert len(load("experts", sweep=single["run_id"])) == 2 * 8
    with pytest.raises(ResultsNotFound, match=r"no sweep or run 'nope' in outputs/results; recent sweeps: \w{12} \("):
        load("runs", sweep="nope")


# -- §3.3: dataset labels describe what was loaded --------------------------------------------------------------------------
def test_dataset_labels_describe_what_was_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    data = DATA / "tiny.jsonl"
    run_job(tmp_path, "dataset=hf", "dataset.path=json", f"dataset.data_files={data}", *SMALL)
    row = latest_run(tmp_path)
    assert row["status"] == "ok" and row["dataset"] == "json-tiny.jsonl" and row["dataset_kind"] == "hf"
    assert row["dataset_source"] == f"json:train {data}"
    run_job(tmp_path, "dataset=local", f"dataset.path={data}", "dataset.slice=\"[:3]\"", *SMALL)
    row = latest_run(tmp_path)
    assert row["dataset"] == "tiny.jsonl" and row["dataset_source"] == f"{data}[:3]" and row["documents"] == 3
    layers = results.read_table(tmp_path / "results", "layers")
    assert set(layers["dataset"]) == {"json-tiny.jsonl", "tiny.jsonl"}  # the join keys carry the same label
    run_job(tmp_path, "dataset=local", f"dataset.path={data}", "dataset.name=mine", *SMALL)
    assert latest_run(tmp_path)["dataset"] == "mine"  # an explicit name wins


def test_dataset_hf_without_a_path_says_what_to_set(tmp_path):
    from runner.errors import ConfigError
    from runner.config.checks import validate

    with pytest.raises(ConfigError, match=r"^dataset.path: dataset=hf needs a path: .*or use dataset=wikitext2$"):
        validate(compose_job(tmp_path, "dataset=hf"))
    conf = validate(compose_job(tmp_path, "dataset=wikitext2"))
    assert (conf.dataset.path, conf.dataset.config_name, conf.dataset.name) == ("wikitext", "wikitext-2-raw-v1",
                                                                                  "wikitext2")


# -- §3.4: the sweep summary shows what differs between jobs, in job order ------------------------------------------------
def test_sweep_summary_has_a_column_per_swept_key(run_sweep, tmp_path, capsys):
    data = DATA / "tiny.jsonl"
    first, second = tmp_path / "a" / "eval.jsonl", tmp_path / "b" / "other.jsonl"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text(data.read_text())
    overrides = ("dataset=local", f"dataset.path={first},{second}", "selector=cumsum", "selector.threshold=0.5,0.9",
                 "topk=4", *SMALL)
    with run_sweep(tmp_path, *overrides):
        summary = pd.read_parquet(tmp_path / "sweep" / "summary.parquet")
    printed = capsys.readouterr().out
    table = printed[printed.index("sweep "):].splitlines()
    header = table[1].split()
    assert header[:6] == ["job", "model", "selector", "k", "dataset.path", "selector.threshold"], table
    assert header[-4:] == ["tok/s", "wall", "s", "status"], table
    rows = [line.split() for line in table[2:6]]
    assert [row[0] for row in rows] == ["0", "1", "2", "3"]  # job order
    assert [(row[4].endswith("eval.jsonl"), row[5]) for row in rows] == [(True, "0.5"), (True, "0.9"), (False, "0.5"),
                                                                        (False, "0.9")]
    assert list(summary["job_num"]) == [0, 1, 2, 3] and list(summary["dataset"]) == ["eval.jsonl"] * 2 + ["other.jsonl"] * 2

    # a resumed sweep: every job skipped, the summary shows the reused rows with their integer columns intact
    with run_sweep(tmp_path, *overrides, "resume=true", name="again"):
        again = pd.read_parquet(tmp_path / "again" / "summary.parquet")
    assert list(again["job_num"]) == [0, 1, 2, 3] and again["loss"].tolist() == summary["loss"].tolist()
    assert str(again["tokens"].dtype) == "Int64" and str(again["topk"].dtype) == "Int32"


# -- §3.5: a pinned sweep never matches runs made with other settings ------------------------------------------------------
def test_baseline_key_keeps_settings_apart(tmp_path, capsys):
    from runner import baseline

    pinned = tmp_path / "pinned.csv"
    assert run_job(tmp_path / "a", "max_batches=1", "seq_len=64")["status"] == "ok"
    assert baseline.main(["update", "--results", str(tmp_path / "a" / "results"), "--file", str(pinned)]) == 0
    for setting in ("seq_len=32", "device.dtype=bfloat16", "batch_size=4", "'dataset.slice=\"[:8]\"'"):
        out = tmp_path / setting.strip("'").split("=")[0]
        assert run_job(out, "max_batches=1", "seq_len=64", setting.strip("'"))["status"] == "ok"
        capsys.readouterr()
        code = baseline.main(["check", "--results", str(out / "results"), "--file", str(pinned)])
        printed = capsys.readouterr().out
        kinds = {line.split(":")[0] for line in printed.splitlines() if line.startswith(("changed", "missing", "extra",
                                                                                           "renamed"))}
        # other keys (missing / extra, or renamed where the value is the same), never one key that matches
        assert code == 1 and kinds and kinds <= {"missing", "extra", "renamed"}, (setting, printed)
    keys = [entry.key for entry in baseline.load(pinned)]
    assert "olmoe_tiny|k=2|router|builtin seq_len=64 batch_size=8 max_batches=1 dtype=float32 device=cpu " \
           "weights=random seed=0|loss" in keys


# -- §3.8: KL is never negative ------------------------------------------------------------------------------------------
def test_kl_rounding_noise_is_clamped_at_zero():
    import torch

    from runner.profiler.evaluate import batch_sums

    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(2, 16, 259, generator=generator)
        ids = torch.randint(0, 259, (2, 16), generator=generator)
        # the same distributions (a softmax ignores a shift), different rounding: the true KL is 0
        sums = batch_sums(logits, ids, logits + 1000.0)
        assert 0.0 <= sums["kl"] < 1e-4 and sums["targets"] == 2 * 15


# -- §3.7: unknown keys from a config are refused too (from the command line: tests/e2e) -------------------------------
def test_unknown_keys_from_a_config_are_refused_too(tmp_path):
    from runner.errors import ConfigError
    from runner.config.checks import validate

    with pytest.raises(ConfigError, match=r"^model.hiden_size: unknown key .*; selector.treshold: unknown key "
                                          r"\(did you mean selector.threshold\?\)"):
        validate(compose_job(tmp_path, "+model.hiden_size=64", "+selector.treshold=0.5"))
    validate(compose_job(tmp_path, "+model.config.rope_theta=1000"))  # model.config takes any transformers kwarg
