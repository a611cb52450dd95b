"""Where a job runs: single run or sweep, its number, directories and overrides, as Hydra's runtime config says
(an empty context outside Hydra, e.g. a test calling the pipeline directly)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..config.identity import PATH_KEYS

from ..results import sweep_id_for


@dataclass
class JobContext:
    multirun: bool = False
    sweep_id: str | None = None
    sweep_dir: str | None = None
    job_num: int | None = None
    job_dir: str | None = None
    overrides: list[str] = field(default_factory=list)
    sweep_params: dict[str, Any] = field(default_factory=dict)  # hydra.sweeper.params as written (unresolved)
    choices: dict[str, Any] = field(default_factory=dict)
    cwd: str = field(default_factory=os.getcwd)

    def absolute(self, path: str) -> str:
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else Path(self.cwd) / p)


def hydra_context() -> JobContext:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return JobContext()
    hc = HydraConfig.get()
    cwd = OmegaConf.select(hc, "runtime.cwd") or os.getcwd()
    job_num = OmegaConf.select(hc, "job.num")
    multirun = hc.mode == RunMode.MULTIRUN or job_num is not None
    def unresolved(key: str) -> Any:  # an override 'tag=${oc.env:S}' is a string to store, not to resolve
        node = OmegaConf.select(hc, key, default=None, throw_on_resolution_failure=False)
        return OmegaConf.to_container(node, resolve=False) if isinstance(node, (DictConfig, ListConfig)) else None

    ctx = JobContext(multirun=multirun, job_num=job_num if multirun else None, cwd=cwd,
                     overrides=[str(o) for o in unresolved("overrides.task") or []],
                     sweep_params=unresolved("sweeper.params") or {},
                     choices={k: v for k, v in (OmegaConf.to_container(hc.runtime.choices) or {}).items()
                              if not k.startswith("hydra/") and k != "runner_schema"})
    ctx.job_dir = OmegaConf.select(hc, "runtime.output_dir")
    if multirun:
        ctx.sweep_dir = ctx.absolute(hc.sweep.dir)
        ctx.sweep_id = sweep_id_for(ctx.sweep_dir)
    return ctx


_ENV_REFERENCE = re.compile(r"\$\{oc\.env:([^,}\s]+)")


def environment_values(cfg: DictConfig, ctx: JobContext) -> dict[str, str]:
    """{value: "${oc.env:NAME}"} for each environment variable the job's config reads outside PATH_KEYS: its keys,
    its command line and the sweep's hydra.sweeper.params (which Hydra resolves into the job's overrides). The
    results store the reference wherever the value would appear (results.io.redact)."""
    def strings(node: Any):
        if isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    data = OmegaConf.to_container(cfg, resolve=False)
    paths = [data.pop(key, None) for key in PATH_KEYS]
    path_names = {name for text in strings(paths) for name in _ENV_REFERENCE.findall(text)}
    names = {name for text in strings([data, ctx.overrides, ctx.sweep_params]) for name in _ENV_REFERENCE.findall(text)}
    values = {os.environ.get(name): "${oc.env:" + name + "}" for name in sorted(names - path_names)}
    return {value: ref for value, ref in values.items() if value}
