"""The names of the dynamic-k selectors, torch-free: the runner's schema checks `selector=<name>` from here without
importing torch. runner/profiler/selectors.py defines one function of each name (its SELECTORS maps them)."""

SELECTOR_NAMES = ("topk", "kneedle", "cumsum", "entropy", "gap_ratio", "min_p")
