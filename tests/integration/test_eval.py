"""Task accuracy through lm-evaluation-harness (`eval=lm_eval`, runner/job/eval_harness.py), in-process on the tiny OLMoE
and the project's own offline task tests/data/tasks/tiny_sums: the tasks rows equal lm_eval.simple_evaluate called
directly on the same model under the same routing, the eval tokens are recorded under phase=eval, a re-run gives the
same scores, and the refusals are one line. The CLI run is tests/e2e/test_cli_eval.py."""
from __future__ import annotations

import contextlib
import re
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from helpers import DATA, ROOT
from helpers.jobs import compose_config, compose_job, run_job, table
from runner import results

TASKS = DATA / "tasks"
KNEEDLE = ("selector=kneedle", "topk=4")
EVAL = ("eval=lm_eval", f"eval.include_path={TASKS}", "eval.tasks=[tiny_sums]", "eval.limit=12",
        "eval.num_fewshot=1", "eval.batch_size=4", "seed=3")
SMALL = ("max_batches=1", "seq_len=32", "batch_size=2")


def in_repo_root():
    """The task YAML names its jsonl relative to the working directory (as lm-eval reads it): the repository root."""
    return contextlib.chdir(ROOT)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The same eval job twice (the second reuses the loaded model), and its tables."""
    out = tmp_path_factory.mktemp("eval")
    with in_repo_root():
        first = run_job(out, *EVAL, *KNEEDLE, *SMALL)
        second = run_job(out, *EVAL, *KNEEDLE, *SMALL)
    assert first["status"] == second["status"] == "ok"
    tasks = table(out, "tasks")
    return dict(out=out, runs=table(out, "runs").sort_values("timestamp"), layers=table(out, "layers"),
                first=tasks[tasks["run_id"] == first["run_id"]], second=tasks[tasks["run_id"] == second["run_id"]])


def test_tasks_rows_are_long_format_with_the_join_keys(evaluated):
    first, runs = evaluated["first"], evaluated["runs"]
    assert sorted(first["metric"]) == ["acc", "acc_norm"]
    assert set(first["task"]) == {"tiny_sums"} and set(first["task_version"]) == {"1.0"}
    assert set(first["filter"]) == {"none"} and (first["n"] == 12).all() and (first["num_fewshot"] == 1).all()
    assert first["value"].between(0, 1).all() and (first["stderr"] > 0).all() and first["higher_is_better"].all()
    # 12 examples: every accuracy is a multiple of 1/12, and the mean's standard error is sqrt(p(1-p)/(n-1))
    for value, stderr in zip(first["value"], first["stderr"]):
        assert abs(value * 12 - round(value * 12)) < 1e-9
        assert stderr == pytest.approx((value * (1 - value) / 11) ** 0.5, rel=1e-9)
    run = runs.iloc[0]
    assert (first["selector"] == "kneedle").all() and (first["topk"] == 4).all()
    assert (first["config_hash"] == run["config_hash"]).all()
    assert (first["schema_version"] == results.SCHEMA_VERSION).all()
    assert run["eval_tasks"] == '["tiny_sums"]' and run["lm_eval_version"] == __import__("lm_eval").__version__
    joined = first.merge(runs[["run_id", "flops_per_token_analytic"]], on="run_id")
    assert len(joined) == 2 and joined["flops_per_token_analytic"].notna().all()


def test_eval_tokens_are_recorded_under_their_own_phase(evaluated):
    layers = evaluated["layers"]
    one_run = layers[layers["run_id"] == evaluated["runs"].iloc[0]["run_id"]]
    by_phase = one_run.groupby("phase")["tokens"].sum()
    assert set(by_phase.index) == {"prefill", "eval"}
    assert by_phase["prefill"] == 2 * 2 * 32  # the text slice: one batch of 2 blocks, 2 MoE layers
    assert by_phase["eval"] > 0
    evals = one_run[one_run["phase"] == "eval"]
    assert (evals["k_mean"] < 4).all() and (evals["k_mean"] >= 1).all()  # kneedle: per-token k within [1, k_max]


def test_a_rerun_gives_identical_scores(evaluated):
    columns = ["task", "metric", "value", "stderr", "n"]
    first = evaluated["first"][columns].sort_values(columns[:2]).reset_index(drop=True)
    second = evaluated["second"][columns].sort_values(columns[:2]).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, second)


def test_scores_equal_simple_evaluate_called_directly_on_the_same_model(evaluated):
    """The model the job ran (the process's model cache), the same selector, lm-eval's own API and seeds."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from runner.job import models
    from runner.profiler import MOEProfiler
    from runner.config.checks import validate

    conf = validate(compose_job(evaluated["out"], *EVAL, *KNEEDLE, *SMALL))
    loaded = models.load(conf.model, conf.device, conf.seed)
    with in_repo_root(), MOEProfiler(loaded.model, verbose=False) as profiler:
        profiler.set_selector("kneedle", k_max=4, k_min=1)
        direct = lm_eval.simple_evaluate(
            HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=4), tasks=["tiny_sums"],
            num_fewshot=1, limit=12, task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
            log_samples=False, random_seed=3, numpy_random_seed=3, torch_random_seed=3, fewshot_random_seed=3)
    scores = direct["results"]["tiny_sums"]
    recorded = evaluated["first"].set_index("metric")
    for metric in ("acc", "acc_norm"):
        assert recorded.loc[metric, "value"] == scores[f"{metric},none"]
        assert recorded.loc[metric, "stderr"] == scores[f"{metric}_stderr,none"]
    assert direct["n-samples"]["tiny_sums"]["effective"] == 12


def refusal(tmp_path, *overrides: str) -> str:
    with in_repo_root(), pytest.raises(SystemExit) as info:
        run_job(tmp_path, *overrides, *SMALL)
    message = str(info.value)
    assert message.startswith("runner: error: ") and "\n" not in message and "Traceback" not in message
    return message


def test_an_unknown_task_is_one_line_naming_it_and_how_to_list_tasks(tmp_path):
    message = refusal(tmp_path, "eval=lm_eval", f"eval.include_path={TASKS}", "eval.tasks=[tiny_sums,no_such_task]")
    assert "unknown task 'no_such_task'" in message and "lm-eval ls tasks" in message
    assert "tiny_sums'" not in message  # the known one is not blamed


def test_an_uncached_hub_dataset_offline_is_one_line_naming_the_task_and_the_fix(tmp_path):
    """A task whose dataset is on the hub only (HF_DATASETS_OFFLINE=1 in the suite, nothing cached)."""
    tasks = tmp_path / "hub_tasks"
    tasks.mkdir()
    (tasks / "hub_only.yaml").write_text((TASKS / "tiny_sums" / "tiny_sums.yaml").read_text()
                                         .replace("task: tiny_sums", "task: hub_only")
                                         .replace("dataset_path: json", "dataset_path: moe-profiler-tests/not-cached"))
    message = refusal(tmp_path, "eval=lm_eval", f"eval.include_path={tasks}", "eval.tasks=[hub_only]")
    assert "task 'hub_only'" in message and "not available locally" in message
    assert "HF_DATASETS_OFFLINE" in message and "HF_DATASETS_CACHE" in message
    assert not (tmp_path / "results" / "table=tasks").exists()


def test_the_config_refusals_are_one_line(tmp_path, monkeypatch):
    assert "at least one task" in refusal(tmp_path, "eval=lm_eval")
    assert "model.weights=meta has no weights" in refusal(tmp_path, "eval=lm_eval", "eval.tasks=[x]",
                                                          "model.weights=meta")
    assert "eval.limit" in refusal(tmp_path, "eval=lm_eval", "eval.tasks=[x]", "eval.limit=2.5")
    assert "is not a directory" in refusal(tmp_path, "eval=lm_eval", "eval.tasks=[x]",
                                           f"eval.include_path={tmp_path / 'none'}")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what Python does for a package that cannot be imported
    message = refusal(tmp_path, "eval=lm_eval", "eval.tasks=[x]")
    assert message.endswith('pip install -e ".[eval]"') and "lm_eval not installed" in message


def test_the_paper_accuracy_experiment_is_declared_in_config():
    from runner.config.checks import validate

    cfg = compose_config("experiment=paper_accuracy", hydra=True)
    assert cfg.model.name == "olmoe" and cfg.eval.name == "lm_eval" and cfg.tag == "paper_accuracy"
    assert list(cfg.eval.tasks) == ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande"]
    assert str(cfg.hydra.sweeper.params.topk) == "1,2,4,8"
    assert str(cfg.hydra.sweeper.params.selector) == "router,kneedle,cumsum"
    assert OmegaConf.select(cfg, "hydra.mode") is None
    with open_dict(cfg):
        del cfg["hydra"]
    assert validate(cfg).eval.num_fewshot == 0


@pytest.mark.parametrize("doc, heading", [("README.md", "## Task accuracy (lm-evaluation-harness)"),
                                          ("docs/eval.md", "## Results: `table=tasks`")])
def test_the_documented_tasks_snippets_run_as_written(evaluated, monkeypatch, capsys, doc, heading):
    """The ```python block under the heading, on the results of the eval jobs above (`load` reads $RUNNER_OUT)."""
    from runner.results import load

    text = (ROOT / doc).read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text[text.index(heading + "\n"):].split("\n## ", 1)[0], flags=re.S)
    monkeypatch.setenv("RUNNER_OUT", str(evaluated["out"]))
    namespace = {"load": load, "runs": load("runs")}
    exec(compile(code, doc, "exec"), namespace)
    printed = capsys.readouterr().out
    assert "tiny_sums" in printed and len(namespace["tasks"]) == 2  # the latest run's acc and acc_norm


def test_a_misspelt_task_is_refused_from_the_kept_index_without_indexing_lm_evals_tasks(tmp_path, monkeypatch):
    """The first full index of lm-eval's tasks keeps their names (eval_checks.task_index_file); a later misspelt
    task is refused from that list: no TaskManager over lm-eval's ~14,000 YAMLs is built (15-20 s on 2 cores)."""
    import lm_eval.tasks

    from runner.config import eval_checks
    from runner.config.schema import EvalConfig, Weights
    from runner.errors import ConfigError
    from runner.job import eval_harness

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    eval_harness._task_manager.cache_clear()
    manager = eval_harness.task_manager(EvalConfig(name="lm_eval", tasks=["arc_easy"]))  # the full index, once
    kept = eval_checks.task_index_file()
    assert kept.parent == tmp_path / "cache" / "moe-profiler" and "arc_easy" in kept.read_text()
    assert set(manager.all_tasks) == eval_checks.cached_task_names()

    real = lm_eval.tasks.TaskManager

    def local_only(*args, include_defaults=True, **kwargs):
        assert not include_defaults, "lm-eval's own tasks were indexed again"
        return real(*args, include_defaults=include_defaults, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", local_only)
    eval_harness._task_manager.cache_clear()
    misspelt = EvalConfig(name="lm_eval", tasks=["arc_eazy"])
    with pytest.raises(ConfigError, match=r"^eval\.tasks: unknown task 'arc_eazy' \(not in lm-eval's registry\)"):
        eval_harness.task_manager(misspelt)
    with pytest.raises(ConfigError, match=r"^eval\.tasks: unknown task 'arc_eazy'"):  # with the config's checks
        eval_checks.check_eval(misspelt, Weights.random)
    with pytest.raises(ConfigError, match=r"unknown task 'no_such_task' \(not in lm-eval's registry nor in eval"):
        eval_harness.task_manager(EvalConfig(name="lm_eval", tasks=["tiny_sums", "no_such_task"],
                                             include_path=str(TASKS)))
    eval_harness._task_manager.cache_clear()


def test_lm_eval_progress_bars_are_off_when_the_output_is_not_a_terminal():
    """tqdm bars with an explicit disable=False (as lm-eval passes) write nothing inside no_progress_bars when the
    stream is not a terminal, still draw on a terminal, and draw again after the block."""
    import io

    from tqdm import tqdm

    from runner.job.eval_harness import no_progress_bars

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        with no_progress_bars(stream):
            assert sum(tqdm(range(5), file=stream, disable=False, desc="requests")) == 10
        assert ("requests" in stream.getvalue()) is drawn
    after = io.StringIO()
    list(tqdm(range(2), file=after, disable=False, desc="after"))
    assert "after" in after.getvalue()
