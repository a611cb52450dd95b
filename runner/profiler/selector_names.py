"""The names of the dynamic-k selectors, torch-free: the runner's schema checks `selector=<name>` from here without
importing torch. runner/profiler/selectors.py defines one function of each name (its SELECTORS maps them)."""

SELECTOR_NAMES = ("topk", "kneedle", "cumsum", "entropy", "gap_ratio", "min_p", "random_k", "layer_k")

# compute-matched selectors (calibrate.py): selector -> (the parameter its k is monotone in, the range bisected, whether
# on a log scale)
CALIBRATED = {"cumsum": ("threshold", 0.0, 1.0, False), "min_p": ("alpha", 0.0, 1.0, False),
              "gap_ratio": ("ratio", 1.0, 1e4, True), "random_k": ("keep", 0.0, 1.0, False)}
# per-layer static k: target_k splits the budget over the layers by their sensitivity (calibrate.allocate_layer_k)
LAYER_BUDGET = "layer_k"
