"""`python -m runner` / `moe-runner`: compose the config with Hydra and run one job (or a sweep with -m).

Nothing else lives here: the schema is runner/schema.py, a job is runner/job.py, the sweep summary runner/callbacks.py.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

import sys

from runner.schema import CONFIG_DIR, check_command_line, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> dict:
    from runner.job import run

    return run(cfg)


def cli() -> None:
    """Unknown keys fail before Hydra composes (its hint would suggest `+key=`, which only hides the typo)."""
    error = check_command_line(sys.argv[1:])
    if not error:
        from runner.preflight import preflight

        error = preflight(sys.argv[1:])  # the composed config(s) of every planned job, before anything runs
    if error:
        sys.exit(f"runner: error: {error}")
    main()


if __name__ == "__main__":
    cli()
