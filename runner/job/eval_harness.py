"""Task accuracy through lm-evaluation-harness (`eval=lm_eval`): the glue between a job and `lm_eval.simple_evaluate`.

The job's loaded model, with its top-k or selector already applied and the profiler attached, is wrapped in lm-eval's
HFLM (which accepts a model instance and a tokenizer) and scored on `eval.tasks`; the routing of those forward passes
is recorded under the phase `eval` (the layers and experts tables get phase=eval rows). Seeds (Python, numpy, torch,
few-shot sampling) are the job's `seed`. simple_evaluate's results become the rows of the `tasks` table
(runner/results/analysis_records.py, TaskRecord). lm-eval is the optional extra `.[eval]`; nothing here imports it before a job
asks for it. docs/eval.md is the manual.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError, one_line
from ..config.eval_checks import cached_task_names, keep_task_names, refuse_unknown_tasks
from ..config.schema import LM_EVAL, EvalConfig
from ..profiler.phases import EVAL

def phases(ev: EvalConfig) -> tuple[str, ...]:
    """The profiler phases a job preallocates for its task evaluation."""
    return (EVAL,) if ev.name == LM_EVAL else ()


@lru_cache(maxsize=4)
def _task_manager(include_path: str | None, tasks: tuple[str, ...]):
    """lm-eval's task index for these names: the include_path alone when it has them all (indexing lm-eval's own
    thousands of task YAMLs takes seconds), else lm-eval's tasks plus the include_path. A name in neither is refused
    from the kept list of lm-eval's task names (task_index_file) before anything is indexed, where that list exists.
    Cached per process."""
    kept = cached_task_names()
    if kept is not None and include_path is None:  # refused before lm_eval.tasks is even imported (3 s)
        refuse_unknown_tasks([name for name in tasks if name not in kept], include_path)
    from lm_eval.tasks import TaskManager

    local_names: set[str] = set()
    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(name in local.all_tasks for name in tasks):
            return local
        local_names = set(local.all_tasks)
    if kept is not None:
        refuse_unknown_tasks([name for name in tasks if name not in kept | local_names], include_path)
    manager = TaskManager(include_path=include_path)
    if include_path is None and kept is None:  # lm-eval's own index alone: what the kept list holds
        keep_task_names(manager.all_tasks)
    refuse_unknown_tasks([name for name in tasks if name not in manager.all_tasks], include_path)
    return manager


def task_manager(ev: EvalConfig):
    include = str(Path(ev.include_path).expanduser().resolve()) if ev.include_path else None
    return _task_manager(include, tuple(ev.tasks))


def prepare(ev: EvalConfig) -> None:
    """Before the model loads: every task name known, every task's dataset readable (each task is built once, which
    reads its dataset), or one line naming the task and the fix. Nothing with eval=none."""
    if ev.name != LM_EVAL:
        return
    import datasets
    from lm_eval.tasks import get_task_dict

    from . import hub

    manager = task_manager(ev)
    if not datasets.config.HF_HUB_OFFLINE:
        hub.reachable()  # no answer: offline mode (cache only) instead of minutes of retries
    for name in ev.tasks:
        try:
            with _quiet():
                get_task_dict([name], manager)
        except (FileNotFoundError, ConnectionError) as exc:
            offline = f" ({hub.why_offline('HF_DATASETS_OFFLINE')})" if datasets.config.HF_HUB_OFFLINE else ""
            raise DataError(f"eval.tasks: task {name!r}: its dataset is not available locally{offline}: "
                            f"{one_line(exc, 200)}; run it once with network (the datasets cache keeps it; "
                            "HF_DATASETS_OFFLINE=1 then reads the cache), or point HF_DATASETS_CACHE at a cache that "
                            "has it") from None
        except Exception as exc:  # noqa: BLE001 - a broken task YAML or dataset: one line naming the task
            raise DataError(f"eval.tasks: task {name!r} could not be loaded: {type(exc).__name__}: "
                            f"{one_line(exc, 300)}") from None


def simple_evaluate(model, tokenizer, ev: EvalConfig, seed: int, manager=None) -> dict[str, Any]:
    """lm_eval.simple_evaluate on an in-memory model through HFLM, seeded by `seed`; returns lm-eval's results."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=ev.batch_size)
    return lm_eval.simple_evaluate(
        lm, tasks=list(ev.tasks), num_fewshot=ev.num_fewshot, limit=ev.limit, task_manager=manager or task_manager(ev),
        log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed)


def task_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """simple_evaluate's results as `tasks` rows: one per task x metric x filter (TaskRecord's columns)."""
    rows = []
    for task, scores in results["results"].items():
        samples = results.get("n-samples", {}).get(task) or {}
        directions = results.get("higher_is_better", {}).get(task) or {}
        version = results.get("versions", {}).get(task)
        for key, value in scores.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filter_name = key.split(",", 1)
            stderr = scores.get(f"{metric}_stderr,{filter_name}")
            rows.append(dict(task=task, task_version=None if version is None else str(version), metric=metric,
                             filter=filter_name, value=float(value),
                             stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
                             n=samples.get("effective"), num_fewshot=results.get("n-shot", {}).get(task),
                             higher_is_better=directions.get(metric)))
    return rows


def run(conf, loaded, profiler, row):
    """The job's task evaluation (nothing with eval=none): fills the run's eval columns and returns the `tasks` rows
    as a frame (None with eval=none). The routing of the scored tokens goes to the phase `eval`."""
    import pandas as pd

    ev = conf.eval
    if ev.name != LM_EVAL:
        return None
    import lm_eval

    row.update(eval_tasks=json.dumps(list(ev.tasks)), lm_eval_version=lm_eval.__version__)
    with profiler.phase(EVAL), _quiet(), no_progress_bars(sys.stderr):
        results = simple_evaluate(loaded.model, loaded.tokenizer, ev, conf.seed)
    return pd.DataFrame(task_rows(results))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval's INFO/WARNING chatter (seeds, few-shot overrides, notes on model instances) kept out of the job's
    output for the length of the block; its errors still show."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def no_progress_bars(stream) -> Iterator[None]:
    """lm-eval's tqdm bars (one per request batch, passed `disable=False` explicitly) turned off for the block when
    `stream` is not a terminal: in a log file or a SLURM .out each refresh is another line of carriage returns. On a
    terminal they stay. tqdm reads no setting at call time that overrides an explicit `disable`, so its __init__ is
    wrapped for the block and restored after."""
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        yield
        return
    from tqdm import tqdm

    original = tqdm.__dict__["__init__"]
    bound = tqdm.__init__

    def init(self, *args, **kwargs):
        kwargs["disable"] = True
        bound(self, *args, **kwargs)

    tqdm.__init__ = init
    try:
        yield
    finally:
        tqdm.__init__ = original
