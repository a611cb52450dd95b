"""User errors end in one clear line and a non-zero exit, never a traceback (issue 6): `python -m runner` and
`python -m runner.baseline` in subprocesses. The same errors in-process: tests/integration/test_errors.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import ROOT
from helpers.cli import cli_env, finish, start


# Each case: CLI arguments, text the message must contain. All started at once (they are independent processes).
JOB_ERRORS = {
    "topk_zero": (["topk=0"], "topk: must be a positive integer"),
    "topk_above_experts": (["topk=9"], "exceeds the 8 experts"),
    "pretrained_offline": (["model=olmoe"], "not in the local Hugging Face cache"),
    "unwritable_output": (["results_dir=/dev/null/results"], "is not writable"),
    "bad_selector_params": (["selector=min_p", "selector.alpha=2"], "alpha must be in [0, 1]"),
    "typo_key": (["topK=4"], "topK: unknown key (did you mean topk?)"),
}
COMPOSE_ERRORS = {
    "unknown_model": (["model=olmo"], "Could not find 'model/olmo'"),
    "unknown_selector": (["selector=top_p"], "Could not find 'selector/top_p'"),
    "non_integer_topk": (["topk=2.5"], "topk"),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    procs = {name: start(tmp / name, *args) for name, (args, _) in {**JOB_ERRORS, **COMPOSE_ERRORS}.items()}
    if not _cuda():
        procs["cuda_without_gpu"] = start(tmp / "cuda", "device=cuda")
    procs["debug_shows_traceback"] = start(tmp / "debug", "topk=0", "debug=true")
    return {name: finish(proc) for name, proc in procs.items()}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("case", sorted(JOB_ERRORS))
def test_job_errors_are_one_line(cli_results, case):
    code, out, err = cli_results[case]
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("runner: error: "), err
    assert JOB_ERRORS[case][1] in lines[0]
    assert "Traceback" not in err + out


@pytest.mark.parametrize("case", sorted(COMPOSE_ERRORS))
def test_composition_errors_exit_nonzero_without_traceback(cli_results, case):
    code, out, err = cli_results[case]
    assert code == 1
    assert COMPOSE_ERRORS[case][1] in err and "Traceback" not in err
    assert "HYDRA_FULL_ERROR" in err  # Hydra's hint


def test_cuda_without_gpu(cli_results):
    if _cuda():
        pytest.skip("a GPU is present: device=cuda runs, the no-GPU error cannot happen")
    code, _, err = cli_results["cuda_without_gpu"]
    assert code == 1 and err.strip().count("\n") == 0 and "no CUDA GPU" in err and "device=cpu" in err


def test_debug_shows_the_traceback(cli_results):
    code, _, err = cli_results["debug_shows_traceback"]
    assert code == 1 and "ConfigError" in err and "Traceback" in err


def test_help_lists_the_groups():
    out = subprocess.run([sys.executable, "-m", "runner", "--help"], cwd=ROOT, env=cli_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for text in ("model: ", "olmoe_tiny", "deepseek_v3", "selector: ", "kneedle", "experiment: ", "paper_topk"):
        assert text in out.stdout


# -- python -m runner.baseline: a corrupt baseline file (tests/integration/test_baseline.py runs the rest in-process) --
def test_corrupt_file_end_to_end_has_no_traceback(tmp_path):
    path = tmp_path / "base.csv"
    path.write_text("not,a,baseline\n")
    proc = subprocess.run([sys.executable, "-m", "runner.baseline", "check", "--file", str(path)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "corrupt baseline file" in proc.stderr and "Traceback" not in proc.stderr
