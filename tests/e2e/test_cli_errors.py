"""User errors end in one clear line and a non-zero exit, never a traceback (issue 6)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DATA, ROOT
from helpers.cli import cli_env, finish, start
from helpers.jobs import run_job


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
        pytest.skip("a GPU is present")
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


# -- in-process: the same SystemExit(one line) path, for the data and model errors -----------------------------------------
def one_line_error(tmp_path: Path, *overrides: str) -> str:
    with pytest.raises(SystemExit) as info:
        run_job(tmp_path, *overrides)
    message = str(info.value)
    assert message.startswith("runner: error: ") and "\n" not in message
    return message


@pytest.mark.parametrize("overrides,needle", [
    (["dataset.slice=\"[100:200]\""], "is empty (16 documents available)"),
    (["dataset.slice=\"[3:3]\""], "is empty"),
    (["seq_len=100000", "model.config.max_position_embeddings=100000"], "less than one block of seq_len=100000"),
    ([f"dataset=local", f"dataset.path={DATA / 'malformed.jsonl'}"], "malformed.jsonl:2: malformed JSON line"),
    ([f"dataset=local", f"dataset.path={DATA / 'wrong_field.jsonl'}"], "no field 'text' (fields: body)"),
    ([f"dataset=local", f"dataset.path={DATA / 'missing.jsonl'}"], "does not exist"),
    ([f"dataset=local", f"dataset.path={DATA}"], "is not a file"),
    ([f"dataset=local", f"dataset.path={DATA / '*.csv'}"], "matches no files"),
    (["dataset=hf", f"dataset.path={DATA / 'no_such_dataset'}", "dataset.config_name=null"], "dataset"),
])
def test_dataset_errors(tmp_path, overrides, needle):
    assert needle in one_line_error(tmp_path, *overrides)


def test_unreadable_binary_and_bad_parquet(tmp_path):
    binary = tmp_path / "bytes.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 64)
    assert "not UTF-8 text" in one_line_error(tmp_path, "dataset=local", f"dataset.path={binary}")
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet at all")
    assert "not a readable parquet file" in one_line_error(tmp_path, "dataset=local", f"dataset.path={fake}")


def test_model_without_moe_block(tmp_path):
    message = one_line_error(tmp_path, "model.model_type=llama", "model.name=llama_tiny", "topk=null",
                             "model.default_topk=null")
    assert "NoMoEError" in message


def test_unknown_model_type(tmp_path):
    assert "model.model_type" in one_line_error(tmp_path, "model.model_type=not_a_model")


def test_selector_the_architecture_cannot_apply_is_one_line(tmp_path):
    # k_max above the experts of the real model (the config check cannot know the count when dims hide it)
    message = one_line_error(tmp_path, "selector=kneedle", "selector.k_max=8", "dims.override.num_experts=4")
    assert "k_max" in message or "experts" in message
