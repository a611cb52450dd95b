"""Errors the runner reports as one line (no traceback) unless `debug=true` or HYDRA_FULL_ERROR=1."""
from __future__ import annotations


class RunnerError(Exception):
    """A problem with the user's request or environment; the message says what and how to fix it."""


class ConfigError(RunnerError, ValueError):
    """A config value that cannot be used (named by its key)."""


class ModelUnavailable(RunnerError):
    """Pretrained weights or tokenizer not found (offline cache miss, bad directory)."""


class DataError(RunnerError):
    """A dataset that cannot be read or yields no tokens."""


class DeviceError(RunnerError):
    """The requested device does not exist here."""


class OutputError(RunnerError):
    """The results directory cannot be written."""


class NumericsError(RunnerError):
    """The model produced non-finite router scores or loss: its routing numbers would be meaningless."""


class ResultsNotFound(RunnerError, LookupError):
    """No results where the reader looked (no results dir, an unknown sweep or run id)."""


# Ctrl-C (SIGINT) under `python -m runner`: set by the CLI's signal handler; `job` is the label of the job recorded as
# `interrupted`, if one was running. The sweep summary then records no lost jobs and prints nothing.
INTERRUPT: dict = {"requested": False, "job": None}


def known_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is enough: the runner's own, the engine's and OmegaConf's validation errors.

    Only modules already imported are consulted: an exception cannot come from a module that never loaded, and
    importing torch (seconds) to classify a config error would make every bad command line slow."""
    import sys

    from omegaconf.errors import ValidationError

    types: list[type[BaseException]] = [RunnerError, ValidationError]
    for module, name in (("runner.profiler.attach", "ProfilerError"), ("runner.profiler.scan", "NoMoEError"),
                         ("runner.profiler.selectors", "SelectorError"), ("torch", "OutOfMemoryError")):
        found = getattr(sys.modules.get(module), name, None)
        if isinstance(found, type):
            types.append(found)
    return tuple(types)


def one_line(text_or_exc: object, limit: int | None = None) -> str:
    """A message (an exception's, or any text) on one line: each run of whitespace, newlines included, becomes one
    space; cut to `limit` characters when given."""
    text = " ".join(str(text_or_exc).split())
    return text if limit is None else text[:limit]


def describe(exc: BaseException) -> str:
    """One line: '<Kind>: message' for engine errors, the message alone for the runner's."""
    from .errors import config_message

    message = config_message(exc) if not isinstance(exc, RunnerError) else one_line(exc, None)
    kind = type(exc).__name__
    if isinstance(exc, RunnerError) or not message:
        return message or kind
    return f"{kind}: {message}"


def config_message(exc: BaseException) -> str:
    """An OmegaConf/Hydra error on one line: their messages carry 'full_key: ...' detail lines; keep the message (its
    first line) and the key."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), "")
    head = lines[0]
    return f"{key}: {head}" if key and key not in head else head
