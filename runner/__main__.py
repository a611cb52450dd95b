"""`python -m runner` / `moe-runner`: compose the config with Hydra and run one job (or a sweep with -m).

Nothing else lives here: the schema is runner/schema.py, a job is runner/job.py, the sweep summary runner/callbacks.py.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from runner.schema import CONFIG_DIR, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> dict:
    from runner.job import run

    return run(cfg)


if __name__ == "__main__":
    main()
