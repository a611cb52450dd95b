"""The library's quality evaluation (runner.profiler.evaluate), used directly without Hydra: the numbers a job
reports, from a model, a profiler and batches of token ids."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from helpers.tiny_configs import build_tiny_model
from runner import MOEProfiler
from runner.profiler.evaluate import batch_sums, evaluate


def batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 128, (2, 16), generator=g) for _ in range(n)]


def nll_by_hand(model, xs):
    """Mean next-token NLL over every target of every batch, from the model's own forward."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x in xs:
            logp = F.log_softmax(model(input_ids=x).logits[:, :-1].float(), -1)
            total += float(-logp.gather(-1, x[:, 1:].unsqueeze(-1)).sum())
            count += x[:, 1:].numel()
    return total / count


def test_own_routing_matches_a_plain_forward_and_its_reference_exactly():
    model = build_tiny_model("olmoe")
    xs = batches()
    expected = nll_by_hand(model, xs)
    profiler = MOEProfiler(model, verbose=False)
    try:
        result = evaluate(model, profiler, xs, reference=True)
    finally:
        profiler.detach()
    assert result.batches == 3 and result.blocks == 6 and result.tokens == 96 and result.targets == 90
    assert math.isclose(result.loss, expected, rel_tol=1e-6) and math.isclose(result.ppl, math.exp(expected))
    # the reference pass runs the same routing: no divergence at all
    assert math.isclose(result.ref_loss, result.loss, rel_tol=1e-6) and result.kl == 0.0
    assert result.top1_agreement == 1.0 and result.measured_tokens == 32  # FLOPs counted on the first batch only
    layers = profiler.layers_df()
    assert (layers["tokens"] == 96).all()  # every batch recorded; the reference passes are not


def test_a_lower_top_k_is_compared_with_the_models_own_routing():
    model = build_tiny_model("olmoe")
    xs = batches()
    own = nll_by_hand(model, xs)
    profiler = MOEProfiler(model, verbose=False)
    try:
        profiler.set_top_k(1)
        result = evaluate(model, profiler, xs, reference=True, measure_flops="all")
        at_k1 = nll_by_hand(model, xs)  # still attached: the forward runs at k=1
    finally:
        profiler.detach()
    assert math.isclose(result.loss, at_k1, rel_tol=1e-6) and math.isclose(result.ref_loss, own, rel_tol=1e-6)
    assert result.kl > 0 and 0 <= result.top1_agreement < 1 and result.measured_tokens == 96
    row = result.row()
    assert row["loss"] == result.loss and "measured_tokens" not in row and row["reference"] is True


def test_batch_sums_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    ids = torch.tensor([[0, 1, 2]])
    sums = batch_sums(logits, ids, logits, pad_id=None)
    # targets 1 and 2 at positions 0 and 1: -ln 0.25 - ln 0.1
    assert sums["targets"] == 2 and math.isclose(sums["nll"], -math.log(0.25) - math.log(0.1), rel_tol=1e-6)
    assert sums["kl"] == 0.0 and sums["agree"] == 2
    assert batch_sums(logits, ids, None, pad_id=2)["targets"] == 1  # the pad target is not counted
