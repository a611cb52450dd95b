"""The fused routing kernel (runner/profiler/fused.py) against the torch reference (LayerAccumulators.accumulate and
drops.add_call_drops), on the CPU through Triton's interpreter: random and adversarial calls (ties, NaN, k=1, k=E,
E not a power of two, sentinel and zero-compute slots, sigmoid and given probabilities, several rows and phases,
calls large enough for several programs). Tolerances: the fused.py docstring."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is imported, and this process may have imported it already (the profiler
# does, where triton is installed): the checks below run in a child pytest with the interpreter on from its start.
IN_CHILD = os.environ.get("MOE_PROFILER_FUSED_CHILD") == "1"
if not IN_CHILD:
    def test_fused_kernel_equals_the_reference_through_the_interpreter():
        if importlib.util.find_spec("triton") is None:
            pytest.skip("triton is not installed (pip install triton): the fused kernel's CPU check runs through "
                        "its interpreter")
        env = {**os.environ, "TRITON_INTERPRET": "1", "MOE_PROFILER_FUSED_CHILD": "1",
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
        child = subprocess.run([sys.executable, "-m", "pytest", __file__, "-v", "-n", "0", "-p", "no:cacheprovider",
                                "-W", "ignore::RuntimeWarning"], env=env, capture_output=True, text=True, timeout=900)
        assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-2000:]
        assert " 10 passed" in child.stdout and "skipped" not in child.stdout, child.stdout[-3000:]
else:
    pytest.importorskip("triton")

from runner.profiler import fused  # noqa: E402
from runner.profiler.analysis_set import Analyses  # noqa: E402
from runner.profiler.drops import add_call_drops  # noqa: E402
from runner.profiler.accumulators import LayerAccumulators  # noqa: E402

EXACT = ("counts", "k_hist", "drops")
child_only = pytest.mark.skipif(not IN_CHILD, reason="runs in the interpreter's child process (the test above)")


def groups(width, num_experts, capacity=True, phases=2):
    analyses = Analyses.of(("capacity",) if capacity else ())
    make = lambda: LayerAccumulators(list(range(len(num_experts))), width, num_experts, phases, torch.device("cpu"),
                                     analyses)
    return make(), make()


def add_both(reference, kernel, row, logits, index, weight, real, scoring="softmax", phase=0):
    for group in (reference, kernel):
        group.phase.fill_(phase)
    rows = slice(row, row + 1)
    reference.accumulate(rows, logits[None], index[None], weight[None], scoring)
    if reference.num_factors:
        add_call_drops(reference, rows, index[None], real, dense=False)
    kernel.add_call(row, logits, index, weight, real, scoring, traced=False)


def assert_same(reference, kernel, tokens):
    for name in reference.shapes():
        want, got = getattr(reference, name), getattr(kernel, name)
        if name in EXACT:
            assert torch.equal(want, got), (name, want, got)
        else:  # fp64 sums of fp32 per-token values: order and exp/log ulps differ
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * max(tokens, 1), equal_nan=True,
                                       msg=lambda m: f"{name}: {m}")
    assert not kernel.call_counts.any() and not kernel.tickets.any(), "the kernel left its scratch dirty"


def routed(logits, k, scoring="softmax"):
    """The router's top-k of its probabilities, as transformers' routers compute them."""
    from runner.profiler.metrics import router_probs

    probs = router_probs(logits, scoring)
    weight, index = probs.topk(k, dim=-1)
    return index, weight


@child_only
@pytest.mark.parametrize("width,k,tokens", [(64, 8, 300), (6, 1, 17), (6, 6, 9), (12, 3, 1), (5, 2, 70)])
def test_random_calls_equal_the_reference(width, k, tokens):
    torch.manual_seed(width * 100 + k)
    reference, kernel = groups(width, [width, width])
    total = 0
    for call, (row, phase) in enumerate([(0, 0), (1, 0), (0, 1), (0, 0)]):  # repeated rows: the scratch resets
        n = tokens + call
        logits = torch.randn(n, width, dtype=torch.bfloat16) * 3
        index, weight = routed(logits, k)
        add_both(reference, kernel, row, logits, index, weight, width, phase=phase)
        total += n
    assert_same(reference, kernel, total)


@child_only
@pytest.mark.parametrize("scoring", ["sigmoid", "probs"])
def test_other_scorings(scoring):
    torch.manual_seed(1)
    reference, kernel = groups(10, [10])
    logits = torch.randn(40, 10)
    if scoring == "probs":
        logits = torch.softmax(logits, -1)
    index, weight = routed(logits, 3, scoring)
    add_both(reference, kernel, 0, logits, index, weight, 10, scoring)
    assert_same(reference, kernel, 40)


@child_only
def test_ties_nan_and_padded_slots():
    torch.manual_seed(2)
    width, real = 10, 8  # two zero-compute columns: indices 8, 9 are not counted
    reference, kernel = groups(width, [real])
    logits = torch.randn(50, width).round()  # integer logits: many ties for top-1, second and the boundary
    logits[:5] = 0.0  # all tied
    logits[7, 3] = float("nan")
    logits[9, 0] = float("nan")
    index, weight = routed(logits, 4)
    index[10:20, -1] = -1  # sentinel slots (dropped by a selector)
    index[20:25, 0] = 9  # zero-compute experts
    index[25, :] = -1  # a token with nothing selected
    add_both(reference, kernel, 0, logits, index, weight, real)
    assert torch.isnan(kernel.sums.view(2, -1)[0, :4]).all()  # the NaN rows spread, as in torch
    assert_same(reference, kernel, 50)


@child_only
def test_probs_with_nan_in_one_column_and_no_capacity_factors():
    torch.manual_seed(3)
    reference, kernel = groups(7, [7], capacity=False)
    probs = torch.softmax(torch.randn(30, 7), -1)
    index, weight = routed(probs, 2, "probs")
    probs[4, 6] = float("nan")  # only that column's importance and that token's sums
    add_both(reference, kernel, 0, probs, index, weight, 7, "probs")
    assert_same(reference, kernel, 30)


@child_only
def test_launch_covers_every_token_once():
    """Several programs stride over a call: the k histogram counts each token exactly once."""
    programs, block = fused.launch_shape(4096, 64)
    assert programs > 1 and programs * block <= 4096 and block * fused.padded(64) <= fused.TILE_ELEMENTS
    reference, kernel = groups(16, [16])
    logits = torch.randn(1000, 16)
    index, weight = routed(logits, 2)
    add_both(reference, kernel, 0, logits, index, weight, 16)
    assert int(kernel.k_hist.sum()) == 1000
    assert_same(reference, kernel, 1000)
