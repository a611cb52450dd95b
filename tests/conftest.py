import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the `helpers` package
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs in one worker per core (pyproject addopts): one intra-op thread each, or the workers' thread
    # pools fight over the cores (2 workers x 2 threads on 2 cores tripled the CPU time). The models are tiny.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
pytest.register_assert_rewrite("helpers")  # plain asserts in the shared helpers explain their failures too


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)  # in case torch was imported before the variable above was set
    torch.manual_seed(0)
    yield


@pytest.fixture
def run_sweep(hydra_sweep_runner, hydra_restore_singletons):
    """A Hydra multirun in-process (basic launcher) writing under tmp_path:

        with run_sweep(tmp_path, "topk=1,2", name="sweep") as s:
            (batch,) = s.returns

    The sweep dir is tmp_path / name; Hydra's singletons are restored after the test."""
    from helpers.jobs import start_sweep  # imported here: conftest stays free of torch / runner imports

    def run(tmp_path: Path, *overrides: str, name: str = "sweep"):
        return start_sweep(hydra_sweep_runner, tmp_path, *overrides, name=name)

    return run


@pytest.fixture
def fresh_dynamo():
    """torch.compile's caches reset before and after the test: each compiles from scratch and leaves nothing behind."""
    import torch

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
