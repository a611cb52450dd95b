"""MoE profiler engine and Hydra runner. Imports are lazy so `python -m runner --help` answers fast."""
from __future__ import annotations

__all__ = ["MOEProfiler", "ProfilerError"]


def __getattr__(name: str):
    if name in __all__:
        from . import profiler

        return getattr(profiler, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
