"""The private Hydra and OmegaConf internals the runner relies on, each used from here only.

Hydra 1.3 offers no public API for what `python -m runner` does before Hydra starts (runner/cli/preflight.py composes the
config the way @hydra.main will, parses Hydra's own flags, lists a sweep's jobs): these wrap the `hydra._internal`
pieces it uses, and the two OmegaConf node accessors that read a value without resolving it. Upstream may move any of
them in a release; tests/integration/test_upstream.py checks every one and names what changed. The library (runner/profiler/)
never imports this module: it imports no Hydra.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import _locate, create_automatic_config_search_path, get_args_parser
from hydra.core.config_loader import ConfigLoader
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from omegaconf import DictConfig, Node

# -- hydra._internal.utils ----------------------------------------------------------------------------------------


def args_parser() -> argparse.ArgumentParser:
    """The parser of @hydra.main's command line (`overrides`, --multirun, --config-dir, --cfg, --help, ...)."""
    return get_args_parser()


def locate(path: str) -> Any:
    """The object a dotted path names (a `_target_`), imported the way hydra.utils.instantiate imports it; raises
    when it cannot be found. (hydra.utils.get_object does the same but logs an error first.)"""
    return _locate(path)


def app_search_path(main_file: str, config_dir: str) -> ConfigSearchPath:
    """The config search path @hydra.main(config_path=config_dir) builds for the app whose main is `main_file`."""
    return create_automatic_config_search_path(main_file, None, config_dir)


# -- hydra._internal.hydra ----------------------------------------------------------------------------------------


class Composer:
    """Hydra's own composition, as @hydra.main runs it, without running anything (hydra._internal.hydra.Hydra).
    The caller clears GlobalHydra around it."""

    def __init__(self, task_name: str, search_path: ConfigSearchPath):
        self._hydra = Hydra.create_main_hydra2(task_name=task_name, config_search_path=search_path)

    @property
    def loader(self) -> ConfigLoader:
        return self._hydra.config_loader

    def is_multirun(self, config_name: str, overrides: list[str]) -> bool:
        """Whether the config (hydra.mode) asks for a multirun."""
        return self._hydra.get_mode(config_name=config_name, overrides=overrides) == RunMode.MULTIRUN

    def compose(self, config_name: str, overrides: list[str], multirun: bool) -> DictConfig:
        """The composed config, `hydra` node included, as the run or the sweep would see it."""
        return self._hydra.compose_config(config_name, overrides,
                                          run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)


def group_exists(loader: ConfigLoader, name: str) -> bool:
    """Whether `name` is a config group (ConfigLoaderImpl.repository)."""
    return loader.repository.group_exists(name)  # type: ignore[attr-defined]


# -- hydra._internal.core_plugins.basic_sweeper -------------------------------------------------------------------


def sweep_batches(overrides: list[Override], max_batch_size: Optional[int]) -> list[list[list[str]]]:
    """The basic sweeper's jobs for parsed sweep overrides: batches of job override lists, in job-number order."""
    return BasicSweeper.split_arguments(overrides, max_batch_size)


# -- omegaconf (private node access: values read without resolving interpolations) ----------------------------------


def child_node(container: Any, key: Any) -> Optional[Node]:
    """The node under `key` of a DictConfig or ListConfig (a nested container, or a value node)."""
    return container._get_node(key)


def raw_value(container: Any, key: Any) -> Any:
    """The value under `key` as written, an interpolation such as '${x}' left as that string."""
    return container._get_node(key)._value()


# -- hydra.core.utils._save_config -------------------------------------------------------------------------------------
def guard_config_writes() -> None:
    """Hydra writes the job's .hydra/config.yaml (hydra.yaml, overrides.yaml) before the task starts; an OSError
    there (a full disk) would be a traceback. Make it one line: a SystemExit, which Hydra's error report (it catches
    Exception) lets through to the interpreter's one-line exit 1. Idempotent."""
    import hydra.core.utils as hydra_utils

    original = hydra_utils._save_config
    if getattr(original, "guarded", False):
        return

    def save_config(cfg: Any, filename: str, output_dir: Any) -> None:
        try:
            original(cfg, filename, output_dir)
        except OSError as exc:
            raise SystemExit(
                f"runner: error: cannot write Hydra's {filename} in {output_dir} ({exc.strerror or exc}); free some "
                "space or set hydra.run.dir / hydra.sweep.dir to a writable directory") from None

    save_config.guarded = True  # type: ignore[attr-defined]
    hydra_utils._save_config = save_config
