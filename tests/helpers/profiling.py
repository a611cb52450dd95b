"""The library as the tests use it: a profiler that prints nothing (its dimension warnings silenced)."""
from __future__ import annotations

import warnings


def quiet_profiler(model, **kwargs):
    """MOEProfiler(model, verbose=False, **kwargs) with the scan's warnings (dimension sources, ...) silenced."""
    from runner.profiler import MOEProfiler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MOEProfiler(model, verbose=False, **kwargs)
