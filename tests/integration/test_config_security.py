"""A config never sets the environment of the job's processes, never copies environment values into the results
(every key, every table), and a report writes only where the command line or the results dir says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers.jobs import every_stored_string, latest_run, run_job
from runner.results import provenance
from runner import results
from runner.cli.preflight import preflight

SECRET = "hf_s3cr3t_value"


# -- a config cannot set the environment git (or any child process) runs with ----------------------------------------
@pytest.mark.parametrize("override,name", [
    ("+hydra.job.env_set.GIT_CONFIG_COUNT=1", "GIT_CONFIG_COUNT"),
    ("+hydra.job.env_set.PATH=/tmp/evil", "PATH"),
    ("+hydra.job.env_set.LD_PRELOAD=/tmp/evil.so", "LD_PRELOAD"),
    ("+hydra.job.env_set.PYTHONSTARTUP=/tmp/evil.py", "PYTHONSTARTUP"),
])
def test_env_set_is_refused(tmp_path, override, name):
    message = preflight([override, f"out_root={tmp_path}"])
    assert message is not None and message.startswith(f"hydra.job.env_set.{name}: configs may not set the environment")
    assert preflight(["+hydra.job.env_set.OMP_NUM_THREADS=2", f"out_root={tmp_path}"]) is None


def test_env_set_from_an_experiment_file_is_refused(tmp_path):
    confdir = tmp_path / "confdir" / "experiment"
    confdir.mkdir(parents=True)
    (confdir / "evil_env.yaml").write_text(
        "# @package _global_\nhydra:\n  job:\n    env_set:\n      GIT_CONFIG_COUNT: '1'\n"
        "      GIT_CONFIG_KEY_0: core.fsmonitor\n      GIT_CONFIG_VALUE_0: touch marker\n")
    message = preflight(["--config-dir", str(tmp_path / "confdir"), "experiment=evil_env", f"out_root={tmp_path}"])
    assert message.startswith("hydra.job.env_set.GIT_CONFIG_COUNT: configs may not set"), message
    message = preflight(["-m", "--config-dir", str(tmp_path / "confdir"), "experiment=evil_env", "topk=1,2",
                         f"out_root={tmp_path}"])
    assert "hydra.job.env_set.GIT_CONFIG_COUNT" in message


def test_provenance_runs_git_with_a_fixed_environment(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.fsmonitor")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", f"touch {marker}; :")  # the hook's arguments go to :
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git").write_text(f"#!/bin/sh\ntouch {marker}.path\nexit 1\n")
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    provenance.git_state.cache_clear()
    try:
        sha, _ = provenance.git_state()
    finally:
        provenance.git_state.cache_clear()
    assert not marker.exists() and not Path(f"{marker}.path").exists()
    if (provenance.REPO / ".git").exists():  # the real git ran (the fake one on PATH would have failed)
        assert re.fullmatch(r"[0-9a-f]{40}", sha or ""), sha


# -- environment values never reach the results ----------------------------------------------------------------------
def test_environment_values_stay_out_of_every_table(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET", SECRET)
    monkeypatch.setenv("SHORT", "s3c")
    out = run_job(tmp_path, "tag=${oc.env:SECRET}", "dataset.name=${oc.env:SECRET}", "model.revision=${oc.env:SECRET}",
                  "+model.config.note=${oc.env:SHORT}", "max_batches=1", "seq_len=32")
    assert out["status"] == "ok"
    row = latest_run(tmp_path)
    assert row["dataset"] == "${oc.env:SECRET}" and row["revision"] == "${oc.env:SECRET}"
    assert "tag=${oc.env:SECRET}" in row["overrides"]
    stored = every_stored_string(tmp_path / "results")
    assert SECRET not in stored and "${oc.env:SECRET}" in stored
    assert "note: ${oc.env:SHORT}" in row["config_yaml"]


# -- a report writes where the command line or the results dir says, never where a stored row points -----------------
def test_report_ignores_a_planted_sweep_dir(tmp_path, capsys):
    import datetime as dt

    from runner.report.__main__ import main as report

    assert run_job(tmp_path, "max_batches=1", "seq_len=32")["status"] == "ok"
    root = tmp_path / "results"
    planted = latest_run(tmp_path).to_dict()
    elsewhere = tmp_path / "elsewhere"
    planted.update(run_id="planted0000000000", sweep_id="../../evil", sweep_dir=str(elsewhere), job_num=0,
                   timestamp=dt.datetime.now(dt.timezone.utc))
    results.write_part(root, "runs", "olmoe_tiny", [planted], planted["config_hash"], planted["run_id"])
    assert report(["latest", "--results-dir", str(root)]) == 0
    assert not elsewhere.exists() and not (tmp_path.parent / "evil").exists()
    written = Path(capsys.readouterr().out.split("report: ")[1].split(" (")[0])
    assert written.parent.parent == root / "reports" and written.is_file()
