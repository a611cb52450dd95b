"""The numbers a newcomer reads in README.md and docs/ that change with the code or with a re-measurement are checked
here against their source: the overhead ratios against BENCHMARKS.md's tables, the baseline file's row count, the
config groups' options against conf/, and the CLI timings against the newest benchmarks/cli_timings.py result."""
from __future__ import annotations

import csv
import json
import re

from helpers import ROOT

README = (ROOT / "README.md").read_text()
BENCHMARKS = (ROOT / "BENCHMARKS.md").read_text()


def _ratios(line: str) -> list[str]:
    return re.findall(r"(\d+\.\d+)×", line)


def test_readme_overhead_is_the_benchmarks_default_configuration_per_mode():
    """README quotes the `analysis=basic` (the default) row of the routing-analyses table, on its card, and the
    routing-only column of the H200 table, in BENCHMARKS' mode order."""
    basic = next(line for line in BENCHMARKS.splitlines() if line.startswith("| `basic`"))
    section = BENCHMARKS[BENCHMARKS.index("## Routing analyses: what they cost"):]
    card = re.search(r"\*\*(NVIDIA [^*]+)\*\*", section).group(1)
    h200 = BENCHMARKS[BENCHMARKS.index("**NVIDIA H200**, code as of"):]
    h200_rows = [line for line in h200.splitlines()[:8] if re.match(r"\| (eager|compiled|static)", line)]
    routing = [_ratios(line)[0] for line in h200_rows]
    modes = "eager prefill {}×, eager decode {}×, compiled prefill {}×,\\s+static-cache decode \\(CUDA graphs\\) {}×"
    claim = " ".join(re.search(r"\* \*\*Measured overhead\*\*(.*?)\n\*", README, re.S).group(1).split())
    assert re.search(modes.format(*_ratios(basic)), claim), (claim, _ratios(basic))
    assert card in claim and "`analysis=basic`" in claim
    assert re.search(r"routing metrics alone on an NVIDIA H200: " + r",\s+".join(rf"{r}×" for r in routing), claim)
    assert "1.2 %" not in README and "near-zero" not in README.lower()


def test_baselines_doc_counts_the_rows_of_the_baseline_file():
    with open(ROOT / "tests" / "baselines" / "flops.csv", newline="") as f:
        rows = sum(1 for _ in csv.DictReader(f))
    doc = (ROOT / "docs" / "baselines.md").read_text()
    assert f"Today's file has {rows:,} rows" in doc
    assert re.findall(r"flops\.csv \((\d[\d,]*) entries", doc) == [f"{rows:,}"]


def test_every_config_group_lists_every_option_in_conf():
    """docs/runner.md's tour of conf/: each group row names every YAML of its directory (a new launcher, model or
    selector that the tour does not mention fails here)."""
    text = (ROOT / "docs" / "runner.md").read_text()
    rows = re.findall(r"^\| `([a-z_/]+)/` \| (.*?) \|", text, re.M)
    assert {group for group, _ in rows} >= {"model", "dataset", "device", "selector", "analysis", "eval", "experiment",
                                            "hydra/launcher"}
    for group, options in rows:
        named = set(re.findall(r"`([^`]+)`", options))
        files = {path.stem for path in (ROOT / "conf" / group).glob("*.yaml")}
        assert files <= named, f"docs/runner.md, {group}/: {sorted(files - named)} not listed"


def test_no_test_count_is_claimed_as_current():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in re.finditer(r"(\d[\d,]*) tests (in|took)", path.read_text()):
            assert re.search(r"\(20\d\d-\d\d-\d\d\)", path.read_text()[match.end():match.end() + 120]), (
                f"{path.name}: '{match.group(0)}' is a count that changes with the code; date it as a measurement")


def test_cli_timings_in_the_docs_are_the_newest_measurement():
    """docs/runner.md and BENCHMARKS.md quote the ranges of the newest benchmarks/cli_timings.py result, with its CPU."""
    newest = max((ROOT / "benchmarks" / "results").glob("cli-timings-*.json"))
    result = json.loads(newest.read_text())
    runner_doc = " ".join((ROOT / "docs" / "runner.md").read_text().split())  # a code span may wrap
    for doc in (runner_doc, BENCHMARKS):
        assert result["cpu"] in doc and newest.name in doc
    for name, times in result["commands"].items():
        quoted = f"{times['min_s']:.1f}–{times['max_s']:.1f} s"
        assert f"`{name}`" in BENCHMARKS and quoted in BENCHMARKS, (name, quoted)
    for name in ("python -m runner", "python -m runner -m experiment=smoke", "python -m runner.baseline check"):
        times = result["commands"][name]
        assert f"`{name}` {times['min_s']:.1f}–{times['max_s']:.1f} s" in runner_doc, name
    assert "3.9 s" not in runner_doc  # the old figure that BENCHMARKS contradicted
