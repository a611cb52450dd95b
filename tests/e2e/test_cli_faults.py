"""Faults while writing, through real processes: three reports into one directory at once, and a full disk
(/dev/full) while Hydra saves the job's config."""
from __future__ import annotations

import subprocess
import sys

from helpers import ROOT
from helpers.cli import cli_env
from helpers.jobs import run_job


def test_concurrent_reports_into_one_directory_all_succeed(tmp_path):
    assert run_job(tmp_path, "max_batches=1", "seq_len=32", "analysis=full")["status"] == "ok"
    out = tmp_path / "report"
    (out / ".report.html.tmp").mkdir(parents=True)  # another writer's temp file under a shared fixed name
    procs = [subprocess.Popen([sys.executable, "-m", "runner.report", str(tmp_path / "results"), "--out", str(out)],
                              cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    done = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in done] == [0, 0, 0], [err for _, err in done]
    assert (out / "report.html").is_file() and [p.name for p in out.glob(".*.tmp")] == [".report.html.tmp"]


def test_a_full_disk_while_hydra_saves_the_job_config_is_one_line(tmp_path):
    """/dev/full answers every write with ENOSPC: the job's .hydra/config.yaml points there."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").symlink_to("/dev/full")
    proc = subprocess.run([sys.executable, "-m", "runner", f"out_root={tmp_path}", f"hydra.run.dir={run_dir}",
                           "max_batches=1", "seq_len=32"], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"runner: error: cannot write Hydra's config.yaml in {run_dir / '.hydra'} (No space "
                                   "left on device); free some space or set hydra.run.dir / hydra.sweep.dir to a "
                                   "writable directory"), proc.stderr
