"""User errors in a job end in one clear line (SystemExit), never a traceback (issue 6): the data and model errors,
in-process. The command line's exit codes and stderr are tests/e2e/test_cli_errors.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import DATA
from helpers.jobs import run_job


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
