"""Refusals of the CLI's preflight that stop a whole sweep before any job runs (every job would fail the same way),
and the quoting hint for a value Hydra reads as a list."""
from __future__ import annotations

import pytest

from runner.config import eval_checks
from runner.cli.preflight import preflight


@pytest.mark.parametrize("argv,label", [
    (["-m", "topk=1,2", "eval=lm_eval", "eval.tasks=[arc_easy]"], ""),
    (["-m", "topk=1", "eval=none,lm_eval", "eval.tasks=[arc_easy]"], "job 1 [topk=1 eval=lm_eval "),
])
def test_a_sweep_needing_a_missing_package_is_refused_before_any_job(tmp_path, monkeypatch, argv, label):
    monkeypatch.setattr(eval_checks, "EVAL_NEEDS", ("no_such_module_for_the_test",))
    message = preflight([*argv, f"out_root={tmp_path}"])
    assert message is not None and message.startswith(label)
    assert "eval=lm_eval needs lm-evaluation-harness (no_such_module_for_the_test not installed)" in message
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv", [["dataset.slice=[:5]"], ["-m", "topk=1,2", "dataset.slice=[:5]"]])
def test_unquoted_brackets_get_the_quoting_hint(tmp_path, argv):
    assert preflight([*argv, f"out_root={tmp_path}"]) == (
        "dataset.slice=[:5]: dataset.slice takes a string, and Hydra reads unquoted brackets as a list; quote the "
        "value inside the shell's quotes: 'dataset.slice=\"[:5]\"'")
    assert preflight(['dataset.slice="[:5]"', f"out_root={tmp_path}"]) is None


def test_a_launcher_setting_that_does_not_resolve_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_SLURM_MEM_GB", "abc")
    assert preflight(["-m", "topk=1,2", "hydra/launcher=slurm_cpu", f"out_root={tmp_path}"]) == (
        "hydra.launcher.mem_gb: '${oc.env:RUNNER_SLURM_MEM_GB,16}' does not resolve (While dereferencing interpolation "
        "'${oc.env:RUNNER_SLURM_MEM_GB,16}': Value 'abc' of type 'str' could not be converted to Integer); set "
        "RUNNER_SLURM_MEM_GB to a valid value, or set hydra.launcher.mem_gb=<value> on the command line")
    assert preflight(["-m", "topk=1,2", "hydra/launcher=slurm_cpu", "hydra.launcher.mem_gb=8",
                      f"out_root={tmp_path}"]) is None
    assert not (tmp_path / "results").exists()  # no `failed` row for a job never submitted
