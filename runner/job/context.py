"""Where a job runs: single run or sweep, its number, directories and overrides, as Hydra's runtime config says
(an empty context outside Hydra, e.g. a test calling the pipeline directly)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..results import sweep_id_for


@dataclass
class JobContext:
    multirun: bool = False
    sweep_id: str | None = None
    sweep_dir: str | None = None
    job_num: int | None = None
    job_dir: str | None = None
    overrides: list[str] = field(default_factory=list)
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
    ctx = JobContext(multirun=multirun, job_num=job_num if multirun else None, cwd=cwd,
                     overrides=list(OmegaConf.select(hc, "overrides.task") or []),
                     choices={k: v for k, v in (OmegaConf.to_container(hc.runtime.choices) or {}).items()
                              if not k.startswith("hydra/") and k != "runner_schema"})
    ctx.job_dir = OmegaConf.select(hc, "runtime.output_dir")
    if multirun:
        ctx.sweep_dir = ctx.absolute(hc.sweep.dir)
        ctx.sweep_id = sweep_id_for(ctx.sweep_dir)
    return ctx
