"""Shared helpers of the test suite. Test modules import from here, never from each other
(tests/unit/test_suite_layout.py checks that).

- ``helpers.jobs``: compose Hydra configs and run jobs in-process; read the results tables; the tiny models' FLOPs.
  The in-process sweep is the ``run_sweep`` fixture of tests/conftest.py.
- ``helpers.cli``: the environment and process helpers for ``python -m runner`` subprocesses.
- ``helpers.config_dirs``: a --config-dir of bad files, for the preflight tests in-process and through the CLI.
- ``helpers.caches``: a plain expert-cache simulator (LRU, LFU, OPT), one capacity at a time.
- ``helpers.tiny_configs``: tiny random-init configs of every MoE causal-LM architecture in transformers.
- ``helpers.profiling``: ``quiet_profiler``, a MOEProfiler that prints nothing. The ``fresh_dynamo`` fixture
  (torch.compile caches reset around a test) is in tests/conftest.py.
"""
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]  # tests/
ROOT = TESTS.parent  # the repository
DATA = TESTS / "data"  # input files of the tests
BASELINES = TESTS / "baselines"  # the stored FLOPs baseline

# The default model (conf/config.yaml) is the trained olmoe_pydoc. Tests of mechanics (errors, sweeps, records) run the
# random olmoe_tiny, 60x fewer FLOPs per token, unless they name a model or an experiment (which names its own); the
# tests of the trained model and of the default itself name theirs.
TINY_MODEL = "model=olmoe_tiny"


def tiny_unless_named(args) -> list[str]:
    """Command-line overrides with `model=olmoe_tiny` first unless they name a model or an experiment."""
    args = list(args)
    if any(a.lstrip("+~").startswith(("model=", "experiment=")) for a in args):
        return args
    return [TINY_MODEL, *args]


__all__ = ["BASELINES", "DATA", "ROOT", "TESTS", "TINY_MODEL", "tiny_unless_named"]
