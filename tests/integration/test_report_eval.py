"""The report of a real eval=lm_eval sweep (the project's offline task tests/data/tasks/tiny_sums): its task rows
carry the job's key columns (topk) too, and the task figure is drawn."""
from __future__ import annotations

import contextlib

from helpers import DATA, ROOT
from helpers.jobs import run_job


def test_the_report_of_an_eval_sweep_draws_the_task_figure(tmp_path, capsys):
    from runner.report.__main__ import main as report

    evaluate = ("eval=lm_eval", f"eval.include_path={DATA / 'tasks'}", "eval.tasks=[tiny_sums]", "eval.limit=4",
                "eval.batch_size=4", "max_batches=1", "seq_len=32", "batch_size=2")
    with contextlib.chdir(ROOT):  # the task YAML names its jsonl relative to the repository root
        for k in (1, 2):
            assert run_job(tmp_path, f"topk={k}", *evaluate)["status"] == "ok"
    assert report([str(tmp_path / "results"), "--out", str(tmp_path / "report")]) == 0, capsys.readouterr().err
    assert (tmp_path / "report" / "olmoe_tiny-tasks.png").is_file()
