"""Hydra configs composed and jobs run in-process, the way `python -m runner` does, and their results tables.

The in-process multirun (Hydra's `hydra_sweep_runner`) is the `run_sweep` fixture of tests/conftest.py; it calls
`start_sweep` below.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from runner.job import pipeline as job
from runner import results
from runner.config.schema import CONFIG_DIR
from runner.config.help import register_configs

from . import tiny_unless_named

register_configs()

H, I, E = 64, 32, 8  # olmoe_tiny / mixtral_tiny


def moe_flops(k: int, layers: int = 2, shared: int = 0) -> int:
    """Survey §7: router 2HE + k * 6HI (+ shared 6H*I_s) per MoE layer."""
    return layers * (2 * H * E + k * 6 * H * I + shared)


def compose_config(*overrides: str, hydra: bool = False):
    """The project's config with these overrides (no out_root); `hydra=True` keeps the `hydra` node. The model is
    olmoe_tiny unless the overrides name one (helpers.tiny_unless_named)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="test"):
        return compose("config", overrides=tiny_unless_named(overrides), return_hydra_config=hydra)


def compose_job(tmp_path: Path, *overrides: str):
    """A single run's config writing under tmp_path, with Hydra's runtime config set as `python -m runner` has it
    (olmoe_tiny unless the overrides name a model)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="test"):
        cfg = compose("config", overrides=[f"out_root={tmp_path}", *tiny_unless_named(overrides)],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_job(tmp_path: Path, *overrides: str) -> dict:
    return job.run(compose_job(tmp_path, *overrides))


def table(tmp_path: Path, name: str) -> pd.DataFrame:
    return results.read_table(tmp_path / "results", name)


def latest_run(tmp_path: Path) -> pd.Series:
    return table(tmp_path, "runs").sort_values("timestamp").iloc[-1]


def every_stored_string(results_dir: Path) -> str:
    """All the string cells of every table of a results dir, and its part files' paths (partition names)."""
    text = [str(p.relative_to(results_dir)) for p in results_dir.rglob("*.parquet")]
    for name in results.TABLES:
        frame = results.read_table(results_dir, name)
        for column in frame.columns:
            text += [str(v) for v in frame[column].dropna().tolist() if isinstance(v, str)]
    return "\n".join(text)


def start_sweep(hydra_sweep_runner, tmp_path: Path, *overrides: str, name: str = "sweep"):
    """A multirun in-process (basic launcher), its sweep dir tmp_path / name; use as a context manager."""
    return hydra_sweep_runner(calling_file=None, calling_module="runner", task_function=job.run,
                              config_path=str(CONFIG_DIR), config_name="config",
                              overrides=[f"out_root={tmp_path}", *tiny_unless_named(overrides)],
                              temp_dir=str(tmp_path / name))


def runs_of(tmp_path: Path, sweep_dir: Path) -> pd.DataFrame:
    """The runs rows of one sweep, in job order."""
    runs = results.read_table(tmp_path / "results", "runs")
    return runs[runs["sweep_id"] == results.sweep_id_for(str(sweep_dir))].sort_values("job_num").reset_index(drop=True)
