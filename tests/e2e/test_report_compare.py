"""The sweep report, the compare gate and sweep progress, as a user meets them: two real sweeps of the default trained
model run once (subprocesses, no TTY, started together). Sweep A (topk=1,2 x router,kneedle) writes its report at its
end; sweep B (topk=2,4, own routing) runs with report=false on a checkpoint of the same name and architecture with
experts half as wide (written here, random weights: other FLOPs and loss). The report and compare CLIs then run
in-process on those results."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers.cli import finish, start

MODEL = "model=olmoe_pydoc"  # the default, named: helpers.cli.start runs olmoe_tiny otherwise
A_JOBS = ("topk=1,2", "selector=router,kneedle")
SMALL = ("seq_len=64", "max_batches=2")  # both sweeps: the same settings, so their jobs match
H, I, E, LAYERS = 128, 128, 8, 4  # the trained model (conf/model/olmoe_pydoc.yaml)


def narrow_checkpoint(out: Path) -> Path:
    """The trained model's config with experts of width I/2, random weights, and its tokenizer, saved as a checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from runner.trained import TRAINED_DIR

    trained = TRAINED_DIR / "olmoe_pydoc_bytes"
    config = AutoConfig.from_pretrained(trained)
    config.intermediate_size = I // 2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(trained).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    narrow = narrow_checkpoint(root / "narrow")
    procs = {"a": start(root, MODEL, *A_JOBS, *SMALL, f"hydra.sweep.dir={root / 'a'}", "-m"),
             "b": start(root, MODEL, f"model.hf_id={narrow}", "topk=2,4", "report=false", *SMALL,
                        f"hydra.sweep.dir={root / 'b'}", "-m")}
    done = {name: finish(proc) for name, proc in procs.items()}
    for name, (code, out, err) in done.items():
        assert code == 0, f"sweep {name} failed:\n{out[-2000:]}\n{err[-2000:]}"
    return root, done


class Page(HTMLParser):
    """The report's image links and its summary table cells (data-column of the header, data-value of each cell)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.columns: list[str] = []
        self.rows: list[dict] = []
        self._cell: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "th" and "data-column" in attrs:
            self.columns.append(attrs["data-column"])
        elif tag == "tr" and "data-run-id" in attrs:
            self.rows.append({"run_id": attrs["data-run-id"], "cells": []})
        elif tag == "td" and self.rows:
            self._cell = {"value": attrs.get("data-value"), "text": ""}
            self.rows[-1]["cells"].append(self._cell)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None


def test_sweep_progress_lines_without_a_tty(sweeps):
    root, done = sweeps
    out = done["a"][1]
    lines = [line for line in out.splitlines() if line.startswith("sweep: job ")]
    assert len(lines) == 8  # a start and an end line per job
    assert lines[0].startswith("sweep: job 1/4 started: topk=1 selector=router | elapsed 0:00:")
    assert lines[0].endswith("ETA ?")  # nothing finished yet
    assert re.fullmatch(r"sweep: job 4/4 ok in \d+\.\d s \| elapsed 0:00:\d\d, ETA 0:00:00", lines[-1])
    logged = (root / "a" / "sweep.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in logged] == lines  # the same lines, time-stamped, in the sweep log


def test_the_sweep_report(sweeps):
    root, done = sweeps
    out = done["a"][1]
    report = root / "a" / "report" / "report.html"
    assert re.fullmatch(rf"report: {re.escape(str(report))} \(\d+\.\d s\)", out.rstrip().splitlines()[-1])
    assert "report:" not in done["b"][1]  # report=false
    page = Page()
    page.feed(report.read_text())
    names = {Path(src).name for src in page.images}
    assert {"olmoe_pydoc-frontier.png", "olmoe_pydoc-speed.png", "olmoe_pydoc-expert-load.png",
            "olmoe_pydoc-k-histogram.png", "olmoe_pydoc-layer-metrics.png"} <= names
    from PIL import Image

    for src in page.images:
        assert not src.startswith(("http:", "https:", "/")), src  # beside the page, nothing fetched
        with Image.open(report.parent / src) as image:  # resolves and decodes
            image.load()
            assert image.format == "PNG" and image.size[0] >= 400

    from runner.results import load

    runs = load("summary", sweep=root / "a").set_index("run_id")
    assert len(page.rows) == len(runs) == 4
    numeric = ["job_num", "topk", "k_mean", "flops_per_token_analytic", "flops_per_token_measured", "loss", "ppl",
               "tokens_per_s", "wall_s"]
    assert set(numeric) <= set(page.columns)
    for row in page.rows:
        cells = dict(zip(page.columns, row["cells"]))
        for column in numeric:
            expected = float(runs.loc[row["run_id"], column])
            assert float(cells[column]["value"]) == expected, (column, row["run_id"])
            shown = float(cells[column]["text"].replace(",", ""))
            assert shown == pytest.approx(expected, rel=5e-3, abs=0.6), (column, cells[column]["text"])
        assert cells["status"]["text"] == "ok"


def test_compare_a_sweep_with_itself_passes(sweeps, capsys):
    from runner.baseline.sweep_compare import main

    root, _ = sweeps
    assert main([str(root / "a"), str(root / "a")]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("compare OK: 4 matched job(s), 0 difference(s) beyond tolerance, 0 only in A, "
                                 "0 only in B")
    assert "load CV (mean of layers)" in out and "router entropy (mean of layers)" in out


def test_compare_fails_on_other_flops_and_lists_unmatched_jobs(sweeps, capsys):
    from helpers.jobs import moe_flops
    from runner.baseline.sweep_compare import main

    root, _ = sweeps
    assert main([str(root / "a"), str(root / "b"), "--time-ratio", "1000"]) == 1
    out = capsys.readouterr().out
    # k=2 own routing is the only job both have; B's experts are half as wide: 4 layers x 2 x 6 x H x I/2 fewer FLOPs
    row = next(line for line in out.splitlines() if "MoE FLOPs/tok analytic" in line)
    a = LAYERS * (2 * H * E + 2 * 6 * H * I)
    b = a - LAYERS * 2 * 6 * H * (I // 2)
    assert row.split()[3:6] == [f"{a:,}", f"{b:,}", f"{b - a:+,d}"], row
    assert row.split()[-2:] == ["exact", "FAIL"]
    assert re.search(r"^\s+loss .* rtol 0\.001\s+FAIL$", out, re.M)
    assert re.search(r"^\s+tokens/s .* x1000\s+ok$", out, re.M)  # timing checked only when asked, as a ratio
    assert re.search(r"^\s+load CV \(mean of layers\) .* most at layer \d: ", out, re.M)
    assert ("only in A (3):\n  olmoe_pydoc k=1 router\n  olmoe_pydoc k=1 kneedle(k_max=1,k_min=1)\n"
            "  olmoe_pydoc k=2 kneedle(k_max=2,k_min=1)\nonly in B (1):\n  olmoe_pydoc k=4 router\n") in out
    assert out.rstrip().splitlines()[-1] == ("compare FAILED: 1 matched job(s), 3 difference(s) beyond tolerance, "
                                             "3 only in A, 1 only in B")  # analytic and measured FLOPs, loss


def test_bad_input_is_one_line_and_exit_2(sweeps, capsys, tmp_path):
    from runner.baseline.sweep_compare import main
    from runner.report.__main__ import main as report

    root, _ = sweeps
    assert main([str(tmp_path / "missing"), str(root / "a")]) == 2
    err = capsys.readouterr().err
    assert err == f"compare: error: {tmp_path / 'missing'}: no such directory\n"
    assert report([str(tmp_path), "--results-dir", str(root / "results")]) == 2
    assert capsys.readouterr().err == (f"report: error: {tmp_path}: neither a sweep directory (sweep.json, "
                                       "summary.parquet) nor a results directory (table=runs/)\n")
    assert main([str(root / "a"), "no-such-sweep", "--results-dir", str(root / "results")]) == 2
    assert "no sweep or run 'no-such-sweep'" in capsys.readouterr().err
    summary = json.loads((root / "a" / "sweep.json").read_text())
    assert summary["results_dir"] == str(root / "results")
