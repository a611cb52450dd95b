"""A config cannot copy environment values into the results through a sweep's hydra.sweeper.params (Hydra resolves
them into each job's overrides), through the real CLI."""
from __future__ import annotations

import subprocess
import sys

from helpers import ROOT
from helpers.cli import cli_env
from helpers.jobs import every_stored_string
from runner import results

SECRET = "hf_s3cr3t_value"


def test_sweeper_params_are_stored_as_written(tmp_path):
    """An experiment's hydra.sweeper.params, which Hydra resolves into each job's overrides: the runs rows (tag,
    overrides, config_yaml) keep the reference."""
    experiments = tmp_path / "confdir" / "experiment"
    experiments.mkdir(parents=True)
    (experiments / "secret_sweep.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      tag: ${oc.env:SECRET}\n")
    proc = subprocess.run([sys.executable, "-m", "runner", "-m", "--config-dir", str(tmp_path / "confdir"),
                           f"out_root={tmp_path}", "experiment=secret_sweep", "max_batches=1", "seq_len=32",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT, env=cli_env(SECRET=SECRET),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    runs = results.read_table(tmp_path / "results", "runs")
    assert runs["tag"].tolist() == ["${oc.env:SECRET}"]
    assert SECRET not in every_stored_string(tmp_path / "results")
