"""`python -m runner` / `moe-runner`: compose the config with Hydra and run one job (or a sweep with -m).

Nothing else lives here: the schema is runner/config/schema.py, a job is runner/job/pipeline.py, the sweep summary runner/cli/callbacks.py.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

import os
import signal
import sys

from runner.errors import INTERRUPT
from runner.config.schema import CONFIG_DIR
from runner.config.help import register_configs
from runner.cli.hydra_internals import guard_config_writes
from runner.cli.preflight import check_command_line, expand_shorthands

register_configs()
guard_config_writes()  # a full disk while Hydra saves the job's config: one line, not a traceback


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> dict:
    from runner.job.pipeline import run

    return run(cfg)


def cli() -> None:
    """Unknown keys fail before Hydra composes (its hint would suggest `+key=`, which only hides the typo); then the
    preflight (runner/cli/preflight.py) composes every planned job and checks its targets before Hydra starts any;
    Ctrl-C ends in one line and exit 130."""
    signal.signal(signal.SIGINT, _on_interrupt)
    sys.argv[1:] = expand_shorthands(sys.argv[1:])
    try:
        error = check_command_line(sys.argv[1:])
        if not error:
            from runner.cli.preflight import preflight

            error = preflight(sys.argv[1:])  # the composed config(s) of every planned job, before anything runs
        if error:
            sys.exit(f"runner: error: {error}")
        main()
    except BaseException:
        if not INTERRUPT["requested"]:
            raise
    if INTERRUPT["requested"]:
        sys.stderr = sys.__stderr__
        recorded = f"{INTERRUPT['job']} is recorded with status=interrupted" if INTERRUPT["job"] else \
            "no job was running"
        print(f"runner: interrupted (Ctrl-C): {recorded}; run the same command with resume=true to run only what "
              "is missing", file=sys.stderr, flush=True)
        sys.exit(130)


def _on_interrupt(signum: int, frame) -> None:
    """Ctrl-C: the running job records itself as interrupted while the KeyboardInterrupt unwinds; whatever Hydra
    prints on the way out (a traceback, or an AttributeError when the interrupt lands in its config loader) is
    dropped for the one line of cli()."""
    if not INTERRUPT["requested"]:
        INTERRUPT["requested"] = True
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
    raise KeyboardInterrupt


if __name__ == "__main__":
    cli()
