"""The eval group's checks before anything loads (`eval=lm_eval`: lm-evaluation-harness installed, the tasks known
from the kept index of lm-eval's task names, the numbers in range), torch-free; runner/job/eval_harness.py runs it."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib.util import find_spec
from pathlib import Path

from ..errors import ConfigError
from .schema import EVAL_OFF, LM_EVAL, EvalConfig, Weights

LIST_TASKS = "list them with `lm-eval ls tasks` (add --include_path DIR for local ones)"

EVAL_INSTALL = 'pip install -e ".[eval]"'
# HFLM imports accelerate at import time (lm-eval's own `hf` extra brings it); the `eval` extra installs both
EVAL_NEEDS = ("lm_eval", "accelerate")


def missing_harness() -> str | None:
    """Why eval=lm_eval cannot run here (lm-evaluation-harness not installed), or None."""
    missing = [name for name in EVAL_NEEDS if find_spec(name) is None]
    return f"eval=lm_eval needs lm-evaluation-harness ({', '.join(missing)} not installed): {EVAL_INSTALL}" if missing \
        else None


def check_eval(ev: EvalConfig, weights: Weights) -> None:
    """The eval group's checks before anything loads; ConfigError naming the key."""
    if ev.name == EVAL_OFF:
        return
    if ev.name != LM_EVAL:
        raise ConfigError(f"eval: unknown option {ev.name!r}; use eval=none or eval=lm_eval")
    missing = missing_harness()
    if missing:
        raise ConfigError(missing)
    if not ev.tasks:
        raise ConfigError("eval.tasks: eval=lm_eval needs at least one task, e.g. eval.tasks=[arc_easy,piqa]")
    if weights is Weights.meta:
        raise ConfigError("eval=lm_eval: model.weights=meta has no weights to score tasks with; use "
                          "model.weights=pretrained or random")
    for key, value, low in (("num_fewshot", ev.num_fewshot, 0), ("batch_size", ev.batch_size, 1)):
        if value is not None and value < low:
            raise ConfigError(f"eval.{key}: must be >= {low}, got {value}")
    if ev.limit is not None and (ev.limit <= 0 or (ev.limit >= 1 and ev.limit != int(ev.limit))):
        raise ConfigError(f"eval.limit: {ev.limit} must be a whole number of examples or a fraction in (0, 1)")
    if ev.include_path is not None and not Path(ev.include_path).expanduser().is_dir():
        raise ConfigError(f"eval.include_path: {ev.include_path!r} is not a directory (of local task YAMLs)")
    kept = cached_task_names() if ev.include_path is None else None
    if kept is not None:  # a misspelt task refused with the config errors, before torch is imported
        refuse_unknown_tasks([name for name in ev.tasks if name not in kept], None)


def task_index_file() -> Path:
    """Where the names of lm-eval's own tasks are kept between processes: one file per lm-eval version and install
    (under $XDG_CACHE_HOME, else ~/.cache). Indexing lm-eval's ~14,000 task YAMLs takes 15-20 s on a 2-core CPU;
    with this file a misspelt task is refused without it."""
    from importlib.metadata import version

    install = find_spec("lm_eval").submodule_search_locations[0]
    key = hashlib.sha1(f"{version('lm_eval')}:{install}".encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "moe-profiler" / f"lm_eval-tasks-{version('lm_eval')}-{key}.json"


def cached_task_names() -> set[str] | None:
    try:
        return set(json.loads(task_index_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def keep_task_names(names) -> None:
    """The default index's names, written atomically (a unique temp file, then renamed); a cache that cannot be
    written is skipped (the next refusal is slow again, nothing else changes)."""
    path = task_index_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
            json.dump(sorted(names), tmp)
        os.replace(tmp.name, path)
    except OSError:
        pass


def refuse_unknown_tasks(unknown: list[str], include_path: str | None) -> None:
    if unknown:
        where = f" nor in eval.include_path={include_path}" if include_path else ""
        raise ConfigError(f"eval.tasks: unknown task {', '.join(map(repr, unknown))} (not in lm-eval's registry{where}); "
                          f"{LIST_TASKS}, or set eval.include_path to a directory of task YAMLs")
