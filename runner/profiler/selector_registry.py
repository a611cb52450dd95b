"""The names of the dynamic-k selectors, torch-free: the runner's schema checks `selector=<name>` from here without
importing torch. runner/profiler/selectors.py defines one function of each name (its SELECTORS maps them)."""

# `selector=router`: the model's own router at its top-k, no per-token selection (the app's default; the report and
# the comparisons label it so). Not a policy of the library: the router does that itself.
OWN_ROUTING = "router"
SELECTOR_NAMES = ("topk", "kneedle", "cumsum", "entropy", "gap_ratio", "min_p")
