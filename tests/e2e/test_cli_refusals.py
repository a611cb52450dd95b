"""Issue 13, robustness round 2, through `python -m runner`: bad configs end in one line and exit 1 before anything
runs or is written (the processes are started together), and a 50 MB data file does not grow the peak memory. The
same checks in-process: tests/integration/test_config_refusals.py and test_robustness_data.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, TINY_MODEL, tiny_unless_named
from helpers.cli import cli_env
from helpers.config_dirs import config_dir
from runner import results


def start(tmp: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner", *tiny_unless_named(args), f"out_root={tmp}"], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The CLI cases that need a real process (exit code, nothing written, the victim file), started together."""
    tmp = tmp_path_factory.mktemp("cli")
    confdir = config_dir(tmp)
    (tmp / "victim.txt").write_text("precious")
    cases = {
        "group_int": ["model=5"],
        "sweep_typo": ["-m", "model=olmoe_tiny,olmo", "max_batches=1", "seq_len=32"],
        "evil_experiment": ["--config-dir", str(confdir), "experiment=evil", "max_batches=1", "seq_len=32"],
        "touch": ["+hydra.callbacks.t._target_=runner.job.pipeline.Path.touch", f"+hydra.callbacks.t._args_=[{tmp / 'made'}]",
                  "max_batches=1", "seq_len=32"],
        "broken_yaml": ["--config-dir", str(confdir), "experiment=broken"],
    }
    procs = {name: start(tmp / name, *args) for name, args in cases.items()}
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        done[name] = (proc.returncode, out, err)
    return tmp, done


def one_line(result) -> str:
    code, out, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("runner: error: "), (code, err)
    assert "Traceback" not in out + err
    return lines[0]


# -- 1: a group override that is not a name ---------------------------------------------------------------------------
def test_group_override_that_is_a_number_is_one_line(cli):
    line = one_line(cli[1]["group_int"])
    assert line.startswith("runner: error: model=5: 'model' is a config group and takes an option name, one of: ")
    assert "olmoe_tiny" in line and "ValueError" not in line


# -- 2: malformed and binary YAML ---------------------------------------------------------------------------------------
def test_malformed_yaml_is_one_line_naming_the_file(cli):
    tmp, runs = cli
    line = one_line(runs["broken_yaml"])
    assert f"{tmp / 'confdir' / 'experiment' / 'broken.yaml'}: not valid YAML (" in line and "at line 4, column 1" in line


# -- 10: a typo inside a sweep fails the sweep before any job runs ------------------------------------------------------
def test_sweep_with_an_unknown_option_runs_nothing_and_writes_nothing(cli):
    tmp, runs = cli
    line = one_line(runs["sweep_typo"])
    assert line.startswith("runner: error: job 1 [model=olmo max_batches=1 seq_len=32 ") and \
        "Could not find 'model/olmo'; nothing was run" in line, line
    assert not (tmp / "sweep_typo").exists()  # no results tree, no model=olmo partition, no sweep dir
    assert not runs["sweep_typo"][1]  # no summary


# -- 16: configs cannot instantiate anything but the project's classes and Hydra's plugins -------------------------------
def test_an_experiment_cannot_open_a_file(cli):
    tmp, runs = cli
    line = one_line(runs["evil_experiment"])
    assert line == ("runner: error: hydra.callbacks.x._target_: 'builtins.open' not one of the project's classes "
                    "(runner.*, handlers.*) or Hydra's plugins (hydra._internal.*, hydra_plugins.*); configs may only "
                    "instantiate those (refused before anything was instantiated)")
    assert (tmp / "victim.txt").read_text() == "precious"
    assert not (tmp / "evil_experiment").exists()


def test_a_target_reached_through_a_project_module_is_refused(cli):
    tmp, runs = cli
    line = one_line(runs["touch"])
    assert "hydra.callbacks.t._target_: 'runner.job.pipeline.Path.touch' is not a class defined in runner.*" in line
    assert not (tmp / "made").exists()


# -- streaming data files (issue 13, item 18) --------------------------------------------------------------------------
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
        [sys.executable, "-m", "runner", "-m", TINY_MODEL, f"out_root={tmp_path}", f"hydra.sweep.dir={sweep}", "dataset=local",
         f"dataset.path={','.join(map(str, files))}", "max_batches=1", "batch_size=2", "seq_len=64"],
        cwd=ROOT, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = results.read_table(tmp_path / "results", "runs").sort_values("job_num")
    assert list(runs["status"]) == ["ok"] * 6 and list(runs["tokens"]) == [128] * 6
    # the documents read: the few that fill the blocks (tokenized in groups of ~16k characters), of 40,000
    assert runs["documents"].max() < 20, list(runs["documents"])
    small, *bigs = (int(v) for v in runs["peak_rss_bytes"])
    assert all(b - small < 200 << 20 for b in bigs), (small, bigs)
