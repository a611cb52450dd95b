"""Shared helpers of the test suite. Test modules import from here, never from each other
(tests/unit/test_suite_layout.py checks that).

- ``helpers.jobs``: compose Hydra configs and run jobs in-process; read the results tables; the tiny models' FLOPs.
  The in-process sweep is the ``run_sweep`` fixture of tests/conftest.py.
- ``helpers.cli``: the environment and process helpers for ``python -m runner`` subprocesses.
- ``helpers.config_dirs``: a --config-dir of bad files, for the preflight tests in-process and through the CLI.
- ``helpers.caches``: a plain expert-cache simulator (LRU, LFU, OPT), one capacity at a time.
- ``helpers.tiny_configs``: tiny random-init configs of every MoE causal-LM architecture in transformers.
"""
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]  # tests/
ROOT = TESTS.parent  # the repository
DATA = TESTS / "data"  # input files of the tests
BASELINES = TESTS / "baselines"  # the stored FLOPs baseline

__all__ = ["BASELINES", "DATA", "ROOT", "TESTS"]
