"""`python -m runner -m eval=lm_eval ...` as a user runs it (README): the project's offline task tiny_sums over a small
sweep of k x selector; the job lines and the sweep summary show the scores against MoE FLOPs/token, table=tasks holds
them. The in-process checks (equality with lm_eval.simple_evaluate, phase=eval, re-runs, refusals):
tests/integration/test_eval.py."""
from __future__ import annotations

import re
import subprocess
import sys

from helpers import ROOT, TINY_MODEL
from helpers.cli import cli_env
from runner import results


def test_a_sweep_with_the_offline_task_prints_and_stores_accuracy_per_selector_and_k(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "runner", "-m", f"out_root={tmp_path}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
         TINY_MODEL, "eval=lm_eval", "eval.include_path=tests/data/tasks", "eval.tasks=[tiny_sums]", "eval.limit=8",
         "topk=1,2", "selector=router,kneedle", "max_batches=1", "seq_len=32", "batch_size=2"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stdout + out.stderr
    job_lines = re.findall(r"tasks \(lm-eval [\d.]+\): tiny_sums acc \d\.\d{3}±\d\.\d{3}, acc_norm .*\(n=8, 0-shot\)",
                           out.stdout)
    assert len(job_lines) == 4, out.stdout
    summary = out.stdout[out.stdout.index("task accuracy (eval=lm_eval; table=tasks) against MoE FLOPs/token:"):]
    header, *rows = summary.splitlines()[1:6]
    assert header.split() == ["job", "model", "selector", "k", "k_mean", "MoE", "FLOPs/tok", "tiny_sums", "acc",
                              "tiny_sums", "acc_norm"]
    assert [row.split()[2:4] for row in rows] == [["router", "1"], ["kneedle", "1"], ["router", "2"], ["kneedle", "2"]]
    tasks = results.load("tasks", results_dir=tmp_path / "results")
    assert len(tasks) == 4 * 2 and set(tasks["metric"]) == {"acc", "acc_norm"} and (tasks["n"] == 8).all()
    runs = results.load("runs", results_dir=tmp_path / "results")
    assert set(tasks["run_id"]) == set(runs["run_id"]) and (runs["lm_eval_version"].notna()).all()
