"""The profiler library: attach to a transformers MoE model, record its routing on the device, count FLOPs, change
top-k or apply a dynamic-k selector, and evaluate quality against the model's own routing. Imports no Hydra.

Imports are lazy (`from runner.profiler import MOEProfiler` loads torch then), so that the torch-free module
selector_registry can be read by the runner's schema without importing torch."""
from __future__ import annotations

__all__ = ["Analyses", "MOEProfiler", "ProfilerError", "NoMoEError"]
_HOMES = {"Analyses": "analysis_set", "MOEProfiler": "moe_profiler", "ProfilerError": "attach", "NoMoEError": "scan"}


def __getattr__(name: str):
    if name in _HOMES:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
