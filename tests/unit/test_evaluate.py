"""The library's quality evaluation (runner.profiler.evaluate), used directly without Hydra: the numbers a job
reports, from a model, a profiler and batches of token ids."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from helpers.tiny_configs import build_tiny_model
from runner import MOEProfiler
from runner.profiler.evaluate import UnitSums, batch_sums, bootstrap_ratio, evaluate, target_values


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



def test_bootstrap_ratio_is_seeded_and_brackets_the_ratio():
    nll, targets = np.array([1.0, 2.0, 3.0, 10.0]), np.array([1.0, 1.0, 1.0, 2.0])
    low, high = bootstrap_ratio(nll, targets)
    assert (low, high) == bootstrap_ratio(nll, targets)  # fixed seed: the same interval every time
    assert 1.0 <= low <= 16 / 5 <= high <= 5.0  # within the units' extreme ratios
    # by hand, two units of ratio 1 and 3: a resample's ratio is 1, 2 or 3 with odds 1/4, 1/2, 1/4
    two = np.array([1.0, 3.0]), np.array([1.0, 1.0])
    assert bootstrap_ratio(*two, resamples=4000) == (1.0, 3.0)  # 2.5 % and 97.5 % quantiles
    assert bootstrap_ratio(*two, level=0.4, resamples=4000) == (2.0, 2.0)  # 30 % and 70 %: inside the 1/2 of 2
    assert np.isnan(bootstrap_ratio(np.array([1.0]), np.array([1.0]))[0])  # one unit: no interval


def test_intervals_come_from_per_unit_sums_of_the_targets():
    """Each unit's sums equal the per-target values recounted by hand; each interval brackets its estimate."""
    model = build_tiny_model("olmoe")
    xs = batches()
    units = [np.repeat(np.arange(2 * i, 2 * i + 2)[:, None] // 3, 16, 1) for i in range(3)]  # blocks 0-2, 3-5
    profiler = MOEProfiler(model, verbose=False)
    try:
        by_block = evaluate(model, profiler, xs, reference=True)
        by_unit = evaluate(model, profiler, xs, reference=True, units=units)
    finally:
        profiler.detach()
    assert by_block.intervals["ci_units"] == 6 and by_unit.intervals["ci_units"] == 2
    for result in (by_block, by_unit):
        row = result.row()
        for stem in ("loss", "kl", "top1_agreement", "ppl"):
            assert row[f"{stem}_ci_low"] <= row[stem] <= row[f"{stem}_ci_high"], stem
        assert row["ppl_ci_low"] == math.exp(row["loss_ci_low"])
        delta = row["loss"] - row["ref_loss"]  # the own routing: exactly 0 per target, so a point interval
        assert row["loss_delta_ci_low"] <= delta <= row["loss_delta_ci_high"] and abs(delta) < 1e-6
    sums = UnitSums()
    with torch.no_grad():
        for x, u in zip(xs, units):
            sums.add(target_values(model(input_ids=x).logits, x), u)
        per_block = -torch.cat([F.log_softmax(model(input_ids=x).logits[:, :-1].float(), -1)
                                .gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1) for x in xs]).double().numpy()
    np.testing.assert_allclose(sums.sums["nll"], [per_block[:3].sum(), per_block[3:].sum()], rtol=1e-6)
    assert sums.sums["targets"].tolist() == [45, 45] and "kl" not in sums.sums  # no reference: no KL
