"""Checks of `python -m runner` that run before Hydra starts anything (issue 13): the CLI composes the config itself,
the same way Hydra will (--config-dir, experiments, every planned job of a sweep), and refuses with one line

* a config that cannot be composed for a reason Hydra reports as a traceback (a group given a number: `model=5`, a
  malformed or binary YAML file) or, in a sweep, any planned job that cannot be composed (`-m model=olmoe_tiny,olmo`):
  nothing is launched and nothing is written;
* a key the schema does not have, wherever it comes from (command line, an experiment file, a --config-dir file);
* any `_target_` (and logging `()` / `class` factory) in the composed config, `hydra.*` included, that is not one of
  the project's own classes or Hydra's launcher/sweeper plugins: it is refused before anything is instantiated.

Hydra's own composition errors of a single run (`model=olmo`, `topk=2.5`) are left to Hydra's message.
The library never imports this module (it imports Hydra).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..config.checks import unknown_keys
from ..errors import ConfigError, one_line
from .hydra_internals import Composer, app_search_path, args_parser, child_node, group_exists, locate, raw_value

# `_target_` values that may be instantiated: the project's classes and Hydra's launcher/sweeper plugins
ALLOWED_TARGETS = ("runner.", "handlers.", "hydra._internal.", "hydra_plugins.")
# test-only: comma-separated extra module prefixes (tests/data/plugins' crash callback); never set it in production
ALLOW_ENV = "RUNNER_ALLOW_TARGETS"
# logging factories of hydra.job_logging / hydra.hydra_logging (`class` of handlers, `()` of formatters/filters)
ALLOWED_LOGGING = ("logging.", "colorlog.")
LOG_DIRS = ("${hydra.runtime.output_dir}/", "${hydra:runtime.output_dir}/")


def allowed_prefixes() -> tuple[str, ...]:
    extra = [p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]
    return ALLOWED_TARGETS + tuple(p if p.endswith(".") else p + "." for p in extra)


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, node) for every key of every mapping under `node` (interpolations left unresolved)."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = child_node(node, key)
            yield path, str(key), node
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _walk(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            child = child_node(node, i)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _walk(child, f"{path}[{i}]")


def _target_class(value: Any, prefixes: tuple[str, ...]) -> Optional[str]:
    """None when `value` names a class of a module under `prefixes`; otherwise why not. Nothing outside the
    allowed packages is imported to find out."""
    import inspect

    if not isinstance(value, str) or not value.startswith(prefixes):
        return "not one of the project's classes (runner.*, handlers.*) or Hydra's plugins (hydra._internal.*, " \
               "hydra_plugins.*)"
    try:
        obj = locate(value)
    except Exception as exc:  # noqa: BLE001
        return f"cannot be imported ({type(exc).__name__})"
    # runner.job.pipeline.os.system or runner.job.pipeline.Path.touch: reached through an allowed module, defined elsewhere
    if not inspect.isclass(obj) or not _under(getattr(obj, "__module__", ""), prefixes):
        return "is not a class defined in runner.*, handlers.* or Hydra's plugins"
    return None


def check_targets(cfg: DictConfig) -> None:
    """Refuse (ConfigError) the first `_target_` or logging factory that may not be instantiated, and log files
    outside the job's output directory (a logging.FileHandler can truncate any file)."""
    prefixes = allowed_prefixes()
    for path, key, parent in _walk(cfg):
        logging_section = path.startswith(("hydra.job_logging", "hydra.hydra_logging"))
        where = f"{path}.{key}" if path else key
        if logging_section and key == "filename":
            raw = raw_value(parent, key)
            if not (isinstance(raw, str) and raw.startswith(LOG_DIRS) and ".." not in raw):
                raise ConfigError(f"{where}: {raw!r}: log files go in the job's directory; start the path with "
                                  "${hydra.runtime.output_dir}/ (no '..')")
        if key == "_target_" or (logging_section and key in ("()", "class")):
            try:
                value = parent[key]
            except Exception:  # noqa: BLE001 - an interpolation that does not resolve here
                value = raw_value(parent, key)
            if logging_section and key != "_target_" and isinstance(value, str) and \
                    value.startswith(ALLOWED_LOGGING) and _is_class(value):
                continue
            why = _target_class(value, prefixes)
            if why:
                raise ConfigError(f"{where}: {value!r} {why}; configs may only instantiate those (refused before "
                                  "anything was instantiated)")
    name = OmegaConf.select(cfg, "hydra.job.name", default=None)
    if name is not None and ("/" in str(name) or ".." in str(name)):
        raise ConfigError(f"hydra.job.name: {name!r} names the job's log file; use a name without '/' or '..'")


def _under(module: Any, prefixes: tuple[str, ...]) -> bool:
    return f"{module}.".startswith(prefixes)


def _is_class(value: str) -> bool:
    import inspect

    try:
        obj = locate(value)
        return inspect.isclass(obj) and _under(getattr(obj, "__module__", ""), ALLOWED_LOGGING)
    except Exception:  # noqa: BLE001
        return False


# hydra.job.env_set: the variables a config may set for the job's process (and every process it starts); anything
# else could change what a child process runs (PATH, LD_PRELOAD, PYTHON*, GIT_CONFIG_*: `git` for the provenance)
ALLOWED_ENV_SET = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                   "PYTORCH_CUDA_ALLOC_CONF", "TOKENIZERS_PARALLELISM", "NCCL_DEBUG", "HF_HUB_OFFLINE",
                   "HF_DATASETS_OFFLINE", "TRANSFORMERS_VERBOSITY")


def check_environment(cfg: DictConfig) -> None:
    """Refuse (ConfigError) a `hydra.job.env_set` variable outside ALLOWED_ENV_SET: a config never sets the
    environment the job's child processes run with."""
    env_set = OmegaConf.select(cfg, "hydra.job.env_set", default=None)
    if not isinstance(env_set, DictConfig):
        return
    for name in env_set.keys():
        if str(name) not in ALLOWED_ENV_SET:
            raise ConfigError(f"hydra.job.env_set.{name}: configs may not set the environment of the job's processes "
                              f"(allowed: {', '.join(ALLOWED_ENV_SET)}); export it in the shell instead")


def check_composed(cfg: DictConfig, job: str = "") -> None:
    """Unknown keys, instantiation targets and environment variables of one composed config (with its hydra
    node)."""
    plain = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    unknown = unknown_keys(plain)
    if unknown:
        raise ConfigError(job + "; ".join(unknown))
    try:
        check_targets(cfg)
        check_environment(cfg)
    except ConfigError as exc:
        raise ConfigError(job + str(exc)) from None


def _bad_yaml(dirs: list[Path]) -> Optional[str]:
    """The first YAML file under `dirs` that is not UTF-8 or not YAML, as 'file: why'."""
    import yaml

    for root in dirs:
        for path in sorted(root.rglob("*.yaml")) if root.is_dir() else []:
            try:
                yaml.safe_load(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                return f"{path}: not a UTF-8 text file (a binary file?); fix or remove it"
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
                problem = getattr(exc, "problem", None) or type(exc).__name__
                return f"{path}: not valid YAML ({problem}{where}); fix or remove it"
    return None


def _non_string_group(overrides: list[str], loader) -> Optional[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001
        return None
    for override in parsed:
        key = override.key_or_group
        if override.is_sweep_override() or not group_exists(loader, key):
            continue
        value = override.value()
        if not isinstance(value, str):
            options = ", ".join(loader.get_group_options(key))
            return (f"{override.input_line or key}: '{key}' is a config group and takes an option "
                    f"name, one of: {options}")
    return None


def _unquoted_brackets(exc: BaseException) -> Optional[str]:
    """`dataset.slice=[:5]`: the shell passes the brackets, Hydra reads a list where the key takes a string."""
    import re

    cause, override = exc, None
    while cause is not None:
        found = re.search(r"Error merging override (\S+)", str(cause))
        override = override or (found.group(1) if found else None)
        if re.search(r"Cannot convert '(list|dict)' to string", str(cause)) and override and "=" in override:
            key, value = override.split("=", 1)
            return (f"{override}: {key} takes a string, and Hydra reads unquoted brackets as a list; quote the value "
                    f"inside the shell's quotes: '{key}=\"{value}\"'")
        cause = cause.__cause__ or cause.__context__
    return None


def _explain(exc: BaseException, overrides: list[str], loader, dirs: list[Path]) -> Optional[str]:
    """A one-line message for a composition failure Hydra would show as a traceback; None for Hydra's own errors."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    cause = exc
    while cause is not None:
        mark = getattr(cause, "problem_mark", None)
        if isinstance(cause, yaml.YAMLError) and mark is not None and Path(str(mark.name)).is_file():
            return (f"{mark.name}: not valid YAML ({getattr(cause, 'problem', None) or type(cause).__name__} at line "
                    f"{mark.line + 1}, column {mark.column + 1}); fix or remove it")
        if isinstance(cause, (UnicodeDecodeError, yaml.YAMLError)):
            return _bad_yaml(dirs) or f"a config file cannot be read: {one_line(cause, None)}"
        cause = cause.__cause__ or cause.__context__
    from omegaconf.errors import ConfigKeyError

    cause = exc
    while cause is not None:  # a key an experiment or --config-dir file sets that the schema lacks
        if isinstance(cause, ConfigKeyError) and getattr(cause, "full_key", None):
            nested: dict = {}
            for part in reversed(str(cause.full_key).split(".")):
                nested = {part: nested}
            unknown = unknown_keys(nested)
            if unknown:
                return unknown[0]
        cause = cause.__cause__ or cause.__context__
    quoted = _unquoted_brackets(exc)
    if quoted:
        return quoted
    if isinstance(exc, ValueError) and "Config group override" in str(exc):
        return _non_string_group(overrides, loader) or one_line(exc, None)
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        return None
    return one_line(exc, None) or type(exc).__name__


def _missing_requirement(cfg: DictConfig) -> Optional[str]:
    """A package the config needs that is not installed (eval=lm_eval without lm-evaluation-harness)."""
    from ..config.schema import LM_EVAL
    from ..config.eval_checks import missing_harness

    try:
        wants_eval = OmegaConf.select(cfg, "eval.name") == LM_EVAL
    except Exception:  # noqa: BLE001 - the job's validation names a bad eval group
        return None
    return missing_harness() if wants_eval else None


def _unresolvable_plugin(cfg: DictConfig) -> Optional[str]:
    """A launcher or sweeper setting that does not resolve to its type (RUNNER_SLURM_MEM_GB=abc): Hydra would fail
    instantiating it with a traceback, after recording nothing."""
    from omegaconf.errors import OmegaConfBaseException

    from ..errors import config_message

    for key in ("hydra.launcher", "hydra.sweeper"):
        node = OmegaConf.select(cfg, key, default=None)
        if not isinstance(node, DictConfig):
            continue
        for name in node.keys():
            try:
                node[name]
            except OmegaConfBaseException as exc:
                raw = raw_value(node, name)
                env = [part.split(",")[0] for part in str(raw).split("${oc.env:")[1:]]
                how = f"set {env[0]} to a valid value, or " if env else ""
                why = config_message(exc).removeprefix(f"{key}.{name}: ")
                return (f"{key}.{name}: {raw!r} does not resolve ({why}); {how}"
                        f"set {key}.{name}=<value> on the command line")
    return None


def _output_dir_problem(cfg: DictConfig, multirun: bool) -> Optional[str]:
    """The job (or sweep) directory Hydra will create, checked before it tries: a path through a file would be its
    traceback, and in a sweep every job a `failed` row for a job that never started."""
    from ..files import creatable

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        directory = OmegaConf.select(cfg, key)
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's runtime resolves: Hydra reports it
        return None
    why = creatable(str(directory)) if directory else None
    return f"{key}: cannot create the directory {directory} ({why}); use a directory path" if why else None


def preflight(argv: list[str]) -> Optional[str]:
    """The error line for `python -m runner argv`, or None when Hydra may go ahead."""
    from hydra.core.global_hydra import GlobalHydra

    from ..config.schema import CONFIG_DIR
    from ..config.help import register_configs
    from ..errors import config_message

    register_configs()  # the schema node of conf/config.yaml's defaults (idempotent)

    args, _ = args_parser().parse_known_args(argv)
    if args.experimental_rerun is not None:  # Hydra unpickles the file: code would run before any check
        return "--experimental-rerun is not supported: it loads a pickled config, which can run code; run the job's " \
               "overrides again instead (<job dir>/.hydra/overrides.yaml)"
    if args.help or args.hydra_help or args.info is not None or args.shell_completion or args.cfg is not None:
        return None
    config_name = args.config_name or "config"
    dirs = [CONFIG_DIR]
    search_path = app_search_path(str(Path(__file__).parent / "entry.py"), str(CONFIG_DIR))
    if args.config_dir is not None:
        extra = Path(args.config_dir).absolute()
        if not extra.is_dir():
            return None  # Hydra says so in one line
        dirs.insert(0, extra)
        shadowed = sorted(str(p.relative_to(extra)) for p in extra.rglob("*.yaml")
                          if (CONFIG_DIR / p.relative_to(extra)).is_file())
        if shadowed:  # the project's conf/ comes first in Hydra's search path: these files would never be read
            return (f"{extra / shadowed[0]}: never read, the project's conf/{shadowed[0]} has the same name and "
                    "comes first; rename it (a primary config: --config-name NAME)")
        from hydra.core.config_search_path import SearchPathQuery

        search_path.prepend(provider="command-line", path=f"file://{extra}", anchor=SearchPathQuery(provider="schema"))
    overrides = list(args.overrides)
    GlobalHydra.instance().clear()
    try:
        composer = Composer("runner", search_path)
        loader = composer.loader
        try:
            multirun = composer.is_multirun(config_name, overrides) or args.multirun
            cfg = composer.compose(config_name, overrides + [f"hydra.mode={'MULTIRUN' if multirun else 'RUN'}"],
                                   multirun)
        except Exception as exc:  # noqa: BLE001
            return _explain(exc, overrides, loader, dirs)
        try:
            check_composed(cfg)
        except ConfigError as exc:
            return str(exc)
        output = _output_dir_problem(cfg, multirun) or _missing_requirement(cfg) or _unresolvable_plugin(cfg)
        if output:
            return output
        if not multirun:
            return None
        from .callbacks import planned_jobs

        jobs = planned_jobs(cfg) or []
        for num, job in enumerate(jobs):
            label = f"job {num} [{' '.join(job)}]: "
            try:
                job_cfg = loader.load_sweep_config(cfg, list(job))
            except Exception as exc:  # noqa: BLE001
                why = _explain(exc, list(job), loader, dirs) or config_message(exc)
                return f"{label}{why}; nothing was run"
            try:
                check_composed(job_cfg, label)
            except ConfigError as exc:
                return f"{exc}; nothing was run"
            missing = _missing_requirement(job_cfg)
            if missing:  # every such job would fail the same way: refuse the sweep instead
                return f"{label}{missing}; nothing was run"
        return None
    finally:
        GlobalHydra.instance().clear()


def expand_shorthands(argv: list[str]) -> list[str]:
    """`trace=true` (or a sweep `trace=true,false`) is short for `trace.enabled=...`: Hydra cannot type one key as both
    a bool and a node holding trace.logits and trace.max_tokens."""
    return [f"trace.enabled={arg.split('=', 1)[1]}" if arg.startswith("trace=") else arg for arg in argv]




def check_command_line(argv: list[str]) -> Optional[str]:
    """The first override on a `python -m runner` command line whose key the schema lacks (`topK=4`, `+topK=4`,
    `model.hiden_size=1`), as an error message; None when all are known. Hydra's own syntax errors are left to it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, _ = args_parser().parse_known_args(argv)
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except Exception:  # noqa: BLE001 - a syntax error: Hydra reports it with its own message
        return None
    for override in overrides:
        key = override.key_or_group
        if key.startswith("hydra") or "/" in key or override.package is not None:
            continue
        nested: dict = {}
        for part in reversed(key.split(".")):
            nested = {part: nested}
        errors = unknown_keys(nested)
        if errors:
            return errors[0]
    return None
