"""Tests for runner.profiler.selectors: hand-checked answers, edge cases and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from runner.profiler.selectors import (
    SELECTORS,
    SelectorError,
    cumsum,
    entropy,
    gap_ratio,
    get_selector,
    kneedle,
    mask_from_k,
    min_p,
    random_k,
    layer_k,
    topk,
    validate_params,
)

ALL = sorted(SELECTORS)

# A decaying curve used in several hand-checked cases (E = 6, sums to 1).
CURVE = [0.5, 0.3, 0.1, 0.05, 0.03, 0.02]


def P(*rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def ks(mask: torch.Tensor) -> list[int]:
    return mask.sum(dim=-1).tolist()


def is_prefix(mask: torch.Tensor) -> bool:
    # A prefix mask never has False followed by True.
    m = mask.to(torch.int8)
    return bool((m[:, 1:] <= m[:, :-1]).all()) if m.shape[1] > 1 else True


# --------------------------------------------------------------------------- mask_from_k


def test_mask_from_k_builds_prefix_masks():
    m = mask_from_k(torch.tensor([0, 1, 3, 5]), 4)
    assert m.dtype == torch.bool
    assert m.tolist() == [
        [False, False, False, False],
        [True, False, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]
    assert mask_from_k(torch.zeros(0, dtype=torch.long), 3).shape == (0, 3)


# --------------------------------------------------------------------------- registry


def test_registry_has_the_six_selectors_with_formula_docstrings():
    assert ALL == ["cumsum", "entropy", "gap_ratio", "kneedle", "layer_k", "min_p", "random_k", "topk"]
    for name, fn in SELECTORS.items():
        assert fn.__doc__ and len(fn.__doc__.strip()) > 20, name


# --------------------------------------------------------------------------- topk


def test_topk_keeps_exactly_k():
    p = P(CURVE, [1 / 6] * 6)
    assert ks(topk(p, 4)) == [4, 4]
    assert ks(topk(p, 4, k=2)) == [2, 2]
    assert topk(p, 4, k=2).tolist()[0] == [True, True, False, False]
    assert ks(topk(p, 6, k_min=3, k=3)) == [3, 3]


@pytest.mark.parametrize("k", [0, 5, -1])
def test_topk_rejects_k_outside_bounds(k):
    with pytest.raises(SelectorError, match=r"topk: k=.* must be in \[k_min=1, k_max=4\]"):
        topk(P(CURVE), 4, k=k)


def test_topk_k_below_k_min_raises():
    with pytest.raises(SelectorError, match="k_min=3"):
        topk(P(CURVE), 4, k_min=3, k=2)


# --------------------------------------------------------------------------- kneedle


def test_kneedle_known_curve():
    # E=6, p_(1)-p_(E) = 0.48; x = [0, .2, .4, .6, .8, 1]
    # y = [0, .2/.48, .4/.48, .45/.48, .47/.48, 1] = [0, .4167, .8333, .9375, .9792, 1]
    # y-x = [0, .2167, .4333, .3375, .1792, 0] -> argmax i=2 -> k = 3
    assert ks(kneedle(P(CURVE), 6)) == [3]
    assert kneedle(P(CURVE), 6).tolist() == [[True, True, True, False, False, False]]
    # clamped by k_max and by k_min
    assert ks(kneedle(P(CURVE), 2)) == [2]
    assert ks(kneedle(P(CURVE), 6, k_min=5)) == [5]


def test_kneedle_one_hot_ish_row():
    # [0.9, 0.02 x5]: y = [0, 1, 1, 1, 1, 1], x = [0, .2, ...] -> y-x max at i=1 -> k = 2.
    # The knee point itself (first tail point) is kept; that is the spec'd formula.
    assert ks(kneedle(P([0.9] + [0.02] * 5), 6)) == [2]
    # A true one-hot over E=8 behaves the same way.
    assert ks(kneedle(P([1.0] + [0.0] * 7), 8)) == [2]


def test_kneedle_plateau_has_no_convex_bend():
    # [0.3, 0.3, 0.3, 0.1]: y = [0, 0, 0, 1], x = [0, 1/3, 2/3, 1] -> y-x = [0, -1/3, -2/3, 0]
    # first maximum is i=0 -> k = 1 (documented limitation of the formula).
    assert ks(kneedle(P([0.3, 0.3, 0.3, 0.1]), 4)) == [1]
    # [0.3, 0.3, 0.3, 0.1, 0, 0]: y = [0,0,0,2/3,1,1], x=[0,.2,.4,.6,.8,1] -> max at i=4 -> k=5
    assert ks(kneedle(P([0.3, 0.3, 0.3, 0.1, 0.0, 0.0]), 6)) == [5]


def test_kneedle_uniform_rows_give_k_max():
    assert ks(kneedle(P([1 / 8] * 8, [1 / 8] * 8), 5)) == [5, 5]
    # softmax of equal logits is uniform up to fp32 rounding
    p = torch.softmax(torch.zeros(3, 64), dim=-1)
    assert ks(kneedle(p, 8)) == [8, 8, 8]
    assert ks(kneedle(p, 8, k_min=2)) == [8, 8, 8]


# --------------------------------------------------------------------------- cumsum


def test_cumsum_known_row():
    p = P(CURVE)  # cumulative: .5, .8, .9, .95, .98, 1.0
    assert ks(cumsum(p, 6, threshold=0.9)) == [3]  # reaches .9 at k=3 (fp tolerance)
    assert ks(cumsum(p, 6, threshold=0.85)) == [3]
    assert ks(cumsum(p, 6, threshold=0.8)) == [2]
    assert ks(cumsum(p, 6, threshold=0.81)) == [3]
    assert ks(cumsum(p, 6, threshold=0.5)) == [1]
    assert ks(cumsum(p, 6, threshold=0.96)) == [5]


def test_cumsum_not_reached_within_k_max_gives_k_max():
    # seed bug 11 returned 1 here
    assert ks(cumsum(P(CURVE), 2, threshold=0.9)) == [2]
    assert ks(cumsum(P(CURVE), 4, threshold=0.99)) == [4]


def test_cumsum_threshold_zero_gives_k_min():
    assert ks(cumsum(P(CURVE, [1 / 6] * 6), 6, threshold=0.0)) == [1, 1]
    assert ks(cumsum(P(CURVE, [1 / 6] * 6), 6, k_min=3, threshold=0.0)) == [3, 3]


def test_cumsum_threshold_one():
    # mass reaches 1 only at the last expert -> k_max
    assert ks(cumsum(P(CURVE), 6, threshold=1.0)) == [6]
    assert ks(cumsum(P(CURVE), 4, threshold=1.0)) == [4]
    # a row whose fp mass stays below 1 (by more than 1e-6) never reaches it -> k_max
    assert ks(cumsum(P([0.6, 0.3, 0.0999, 0.0]), 4, threshold=1.0)) == [4]
    # ... unless the mass reaches 1 earlier
    assert ks(cumsum(P([1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]), 4, threshold=1.0)) == [1, 2]


def test_cumsum_uniform():
    u = P([1 / 8] * 8)
    assert ks(cumsum(u, 8, threshold=0.9)) == [8]  # .875 < .9 <= 1.0
    assert ks(cumsum(u, 4, threshold=0.9)) == [4]  # clamped to k_max
    assert ks(cumsum(u, 8, threshold=0.5)) == [4]  # .5 at k=4


# --------------------------------------------------------------------------- entropy


def test_entropy_known_row():
    # H = -(.5 ln .5 + .3 ln .3 + .1 ln .1 + .05 ln .05 + .03 ln .03 + .02 ln .02)
    #   = .3466 + .3612 + .2303 + .1498 + .1052 + .0782 = 1.2713 ; exp(H) = 3.565 -> k = 4
    h = -sum(p * math.log(p) for p in CURVE)
    assert math.ceil(math.exp(h)) == 4
    assert ks(entropy(P(CURVE), 6)) == [4]
    assert ks(entropy(P(CURVE), 3)) == [3]


def test_entropy_one_hot_and_uniform_subsets():
    # 0*log0 = 0, so a one-hot row has H=0 -> perplexity 1
    assert ks(entropy(P([1.0] + [0.0] * 7), 8)) == [1]
    # uniform over n of 8 experts -> exactly n (no fp round-up to n+1)
    rows = [[1 / n] * n + [0.0] * (8 - n) for n in (2, 3, 4, 5, 8)]
    assert ks(entropy(P(*rows), 8)) == [2, 3, 4, 5, 8]
    # via softmax as a router would produce it
    p = torch.softmax(torch.tensor([[0.0] * 4 + [-1e9] * 4]), dim=-1)
    assert ks(entropy(p, 8)) == [4]


def test_entropy_uniform_clamps_to_k_max():
    assert ks(entropy(P([1 / 8] * 8), 4)) == [4]
    assert ks(entropy(torch.softmax(torch.zeros(2, 64), -1), 8)) == [8, 8]


# --------------------------------------------------------------------------- gap_ratio


def test_gap_ratio_known_row():
    # ratios: .5/.3=1.67, .3/.1=3 -> first j with ratio >= 2 is j=2 -> k=2
    assert ks(gap_ratio(P(CURVE), 6)) == [2]
    # ratio 3.5: .3/.1=3 no, .1/.05=2 no, .05/.03=1.67, .03/.02=1.5 -> none -> k_max
    assert ks(gap_ratio(P(CURVE), 6, ratio=3.5)) == [6]
    # ratio 1.6: .5/.3 = 1.67 >= 1.6 -> k=1
    assert ks(gap_ratio(P(CURVE), 6, ratio=1.6)) == [1]
    # ratio exactly met counts (0.4/0.2 == 2)
    assert ks(gap_ratio(P([0.4, 0.2, 0.2, 0.2]), 4)) == [1]


def test_gap_ratio_only_searches_j_below_k_max():
    # the only big gap is after j=4, but with k_max=3 only j=1,2 are looked at -> k_max
    row = [0.22, 0.21, 0.2, 0.19, 0.05, 0.05, 0.04, 0.04]
    assert ks(gap_ratio(P(row), 8)) == [4]
    assert ks(gap_ratio(P(row), 3)) == [3]


def test_gap_ratio_uniform_gives_k_max():
    # seed bug 12 gave 1
    assert ks(gap_ratio(P([1 / 8] * 8), 8)) == [8]
    assert ks(gap_ratio(P([1 / 8] * 8), 5, k_min=2)) == [5]


def test_gap_ratio_zero_next_prob_is_infinite_ratio():
    # .6/.4 = 1.5 < 2, then .4/0 -> infinite -> k=2
    assert ks(gap_ratio(P([0.6, 0.4, 0.0, 0.0]), 4)) == [2]
    assert ks(gap_ratio(P([1.0, 0.0, 0.0, 0.0]), 4, ratio=1e6)) == [1]


def test_gap_ratio_ratio_one_cuts_at_first_position():
    # p_(j) / p_(j+1) >= 1 always holds on sorted rows
    assert ks(gap_ratio(P(CURVE, [1 / 6] * 6), 6, ratio=1.0)) == [1, 1]
    assert ks(gap_ratio(P(CURVE, [1 / 6] * 6), 6, k_min=2, ratio=1.0)) == [2, 2]


# --------------------------------------------------------------------------- min_p


def test_min_p_known_row():
    p = P(CURVE)
    assert ks(min_p(p, 6, alpha=0.15)) == [3]  # cut .075: .5, .3, .1
    assert ks(min_p(p, 6, alpha=0.5)) == [2]  # cut .25: .5, .3
    assert ks(min_p(p, 6, alpha=0.7)) == [1]  # cut .35
    assert ks(min_p(p, 6, alpha=0.03)) == [6]  # cut .015: all
    assert ks(min_p(p, 4, alpha=0.03)) == [4]  # clamped


def test_min_p_alpha_bounds():
    p = P(CURVE, [0.3, 0.3, 0.3, 0.1, 0.0, 0.0])
    assert ks(min_p(p, 5, alpha=0.0)) == [5, 5]  # everything kept, clamped to k_max
    assert ks(min_p(p, 6, alpha=1.0)) == [1, 3]  # only the ties with p_(1)
    assert ks(min_p(p, 6, k_min=2, alpha=1.0)) == [2, 3]


# --------------------------------------------------------------------------- shared cases


def test_sharp_row_gives_one_for_mass_selectors():
    p = P([0.97, 0.01, 0.01, 0.005, 0.005, 0.0, 0.0, 0.0])
    assert ks(cumsum(p, 8)) == [1]
    assert ks(entropy(p, 8)) == [2]  # exp(H) = 1.18 -> ceil 2
    assert ks(entropy(P([0.999] + [0.001 / 7] * 7), 8)) == [2]
    assert ks(entropy(P([1.0] + [0.0] * 7), 8)) == [1]
    assert ks(gap_ratio(p, 8)) == [1]
    assert ks(min_p(p, 8)) == [1]
    assert ks(kneedle(p, 8)) == [2]  # knee point kept (see test_kneedle_one_hot_ish_row)


@pytest.mark.parametrize("k_max", [1, 3, 8])
def test_uniform_rows_give_k_max_for_every_selector(k_max):
    u = P([1 / 8] * 8, [1 / 8] * 8)
    for name in ALL:
        if name != "random_k":  # the baseline draws k whatever the router says
            assert ks(SELECTORS[name](u, k_max)) == [k_max, k_max], name


def test_ties_do_not_depend_on_expert_order():
    base = torch.tensor([0.25, 0.25, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
    rows = torch.stack([base[torch.randperm(8, generator=torch.Generator().manual_seed(s))] for s in range(6)])
    # sorted row: [.25 .25 .1 .1 .1 .1 .05 .05], k_max = 6
    # kneedle: span .2, y = [0 0 .75 .75 .75 .75 1 1], x = i/7 -> max .75-2/7 at i=2 -> k=3
    # cumsum .9: .25 .5 .6 .7 .8 .9 -> k=6 ; entropy: exp(1.9137) = 6.78 -> 7, clamped to 6
    # gap_ratio 2: .25/.25 = 1, .25/.1 = 2.5 -> j=2 ; min_p .1: cut .025 keeps 8, clamped to 6
    expected = {"topk": 6, "kneedle": 3, "cumsum": 6, "entropy": 6, "gap_ratio": 2, "min_p": 6}
    for name in ALL:
        out = SELECTORS[name](rows, 6)
        if name in expected:  # random_k: a draw, the same for every order (below)
            assert ks(out) == [expected[name]] * 6, name
        assert (out == out[0]).all(), name


def test_single_expert():
    p = torch.ones(3, 1)
    for name in ALL:
        m = SELECTORS[name](p, 1)
        assert m.shape == (3, 1) and m.all(), name
    assert ks(kneedle(p, 1)) == [1, 1, 1]


def test_empty_T_returns_empty_mask():
    p = torch.zeros(0, 8)
    for name in ALL:
        m = SELECTORS[name](p, 4)
        assert m.shape == (0, 4) and m.dtype == torch.bool, name


WELL_SEPARATED = torch.softmax(
    torch.tensor(
        [
            [6.0, 2.0, 0.0, -1.0, -3.0, -4.0, -6.0, -8.0],
            [3.0, 2.9, 0.0, -0.5, -3.0, -4.0, -6.0, -8.0],
            [1.0, 1.0, 1.0, 1.0, -4.0, -4.0, -6.0, -8.0],
            [2.0, 1.0, 0.3, -0.5, -1.2, -2.5, -3.3, -5.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    ),
    dim=-1,
)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "name,params",
    [
        ("topk", {"k": 2}),
        ("kneedle", {}),
        ("cumsum", {}),
        ("cumsum", {"threshold": 0.5}),
        ("entropy", {}),
        ("gap_ratio", {}),
        ("gap_ratio", {"ratio": 3.0}),
        ("min_p", {}),
        ("min_p", {"alpha": 0.3}),
    ],
)
def test_half_precision_matches_fp32(dtype, name, params):
    ref = SELECTORS[name](WELL_SEPARATED, 8, **params)
    got = SELECTORS[name](WELL_SEPARATED.to(dtype), 8, **params)
    assert got.dtype == torch.bool
    assert got.tolist() == ref.tolist()


def test_well_separated_reference_values():
    # pins the fp32 reference used by the half-precision test. Rows (rounded):
    #   0: [.979 .018 .002 .001 ...]   1: [.503 .455 .025 .015 .001 ...]
    #   2: [.249 x4, .0017 .0017 .0002 0]   3: [.592 .218 .108 .049 .024 .007 .003 .0005]   4: uniform
    # row 3 kneedle: span .591, y-x at i=1,2,3 = .633-.143, .818-.286, .919-.429 -> i=2 -> k=3
    # row 3 cumsum: .592, .809, .917 -> k=3 ; perplexities: 1.12, 2.39, 4.09, 3.23, 8 -> ceil
    assert ks(kneedle(WELL_SEPARATED, 8)) == [2, 3, 5, 3, 8]
    assert ks(cumsum(WELL_SEPARATED, 8)) == [1, 2, 4, 3, 8]
    assert ks(entropy(WELL_SEPARATED, 8)) == [2, 3, 5, 4, 8]
    assert ks(gap_ratio(WELL_SEPARATED, 8)) == [1, 2, 4, 1, 8]
    assert ks(min_p(WELL_SEPARATED, 8)) == [1, 2, 4, 3, 8]


def test_non_contiguous_input():
    p = WELL_SEPARATED.t().contiguous().t()
    assert not p.is_contiguous()
    for name in ALL:
        assert SELECTORS[name](p, 8).tolist() == SELECTORS[name](WELL_SEPARATED, 8).tolist(), name


def test_meta_device_runs_without_host_sync():
    # meta tensors have no data: any .item()/.tolist()/data-dependent host branch would fail
    p = torch.empty(5, 16, device="meta")
    for name in ALL:
        m = SELECTORS[name](p, 4, k_min=2)
        assert m.device.type == "meta" and m.shape == (5, 4) and m.dtype == torch.bool, name


# --------------------------------------------------------------------------- random invariants


def _random_rows(gen: torch.Generator, T: int, E: int) -> torch.Tensor:
    logits = torch.randn(T, E, generator=gen)
    temp = torch.exp(torch.randn(T, 1, generator=gen) * 1.5)  # from very flat to very peaked
    p = torch.softmax(logits / temp, dim=-1)
    # sprinkle exact zeros and exact ties
    drop = torch.rand(T, E, generator=gen) < 0.15
    drop[:, 0] = False
    p = torch.where(drop, torch.zeros_like(p), p)
    if E > 1:
        p[: T // 4, 1] = p[: T // 4, 0]
    return p / p.sum(-1, keepdim=True)


@pytest.mark.parametrize("name", ALL)
def test_random_rows_prefix_and_bounds(name):
    gen = torch.Generator().manual_seed(1234)
    fn = SELECTORS[name]
    for E in (1, 2, 8, 64):
        p = _random_rows(gen, 200, E)
        for k_max in sorted({1, min(2, E), min(8, E), E}):
            for k_min in sorted({1, k_max, max(1, k_max // 2)}):
                for dtype in (torch.float32, torch.float16, torch.bfloat16):
                    m = fn(p.to(dtype), k_max, k_min=k_min)
                    assert m.shape == (200, k_max) and m.dtype == torch.bool
                    assert is_prefix(m), (name, E, k_max, k_min, dtype)
                    k = m.sum(-1)
                    assert int(k.min()) >= k_min and int(k.max()) <= k_max, (name, E, k_max, k_min)
                # masks depend only on sorted values: permuting the experts changes nothing
                perm = torch.randperm(E, generator=gen)
                assert fn(p[:, perm], k_max, k_min=k_min).tolist() == fn(p, k_max, k_min=k_min).tolist()


def test_random_rows_agree_with_reference_formulas():
    gen = torch.Generator().manual_seed(7)
    p = _random_rows(gen, 300, 16).double()
    s = p.sort(dim=1, descending=True).values
    k_max = 10
    # cumsum: smallest k with mass >= .9, else k_max
    cs = s.cumsum(1)
    want = [next((j + 1 for j in range(k_max) if cs[t, j] >= 0.9 - 1e-6), k_max) for t in range(300)]
    assert ks(cumsum(p.float(), k_max)) == want
    # min_p
    want = [min(k_max, int((p[t] >= 0.1 * s[t, 0]).sum())) for t in range(300)]
    assert ks(min_p(p.float(), k_max)) == want
    # gap_ratio
    want = []
    for t in range(300):
        k = k_max
        for j in range(1, k_max):
            if s[t, j] == 0 or s[t, j - 1] / s[t, j] >= 2.0:
                k = j
                break
        want.append(k)
    assert ks(gap_ratio(p.float(), k_max)) == want
    # entropy (rows far from integer perplexities only)
    perp = torch.exp(-torch.special.xlogy(p, p).sum(1))
    ok = (perp - perp.round()).abs() > 1e-3
    want = perp.ceil().clamp(1, k_max).long()
    assert (entropy(p.float(), k_max).sum(-1)[ok] == want[ok]).all()
    assert int(ok.sum()) > 250


# --------------------------------------------------------------------------- input validation


@pytest.mark.parametrize("name", ALL)
def test_k_max_greater_than_E_raises(name):
    with pytest.raises(SelectorError, match=rf"^{name}: k_max=9 exceeds the number of experts E=8$"):
        SELECTORS[name](torch.full((2, 8), 1 / 8), 9)


@pytest.mark.parametrize("name", ALL)
def test_bad_k_bounds_raise(name):
    fn = SELECTORS[name]
    p = torch.full((2, 8), 1 / 8)
    with pytest.raises(SelectorError, match="k_max must be >= 1, got 0"):
        fn(p, 0)
    with pytest.raises(SelectorError, match="k_min=5 is greater than k_max=4"):
        fn(p, 4, k_min=5)
    with pytest.raises(SelectorError, match="k_min must be >= 1, got 0"):
        fn(p, 4, k_min=0)
    with pytest.raises(SelectorError, match="k_max must be an int"):
        fn(p, 4.0)
    with pytest.raises(SelectorError, match="k_max must be an int, got bool"):
        fn(p, True)
    with pytest.raises(SelectorError, match=r"probs must be 2-D \[T, E\], got shape \(8,\)"):
        fn(p[0], 4)
    with pytest.raises(SelectorError, match="probs must be a float tensor"):
        fn(torch.ones(2, 8, dtype=torch.long), 4)


def test_bad_selector_specific_params_raise():
    p = P(CURVE)
    with pytest.raises(SelectorError, match=r"cumsum: threshold must be in \[0, 1\], got 1.5"):
        cumsum(p, 4, threshold=1.5)
    with pytest.raises(SelectorError, match="gap_ratio: ratio must be >= 1, got 0.5"):
        gap_ratio(p, 4, ratio=0.5)
    with pytest.raises(SelectorError, match=r"min_p: alpha must be in \[0, 1\], got -0.1"):
        min_p(p, 4, alpha=-0.1)
    with pytest.raises(SelectorError, match="threshold must not be NaN"):
        cumsum(p, 4, threshold=float("nan"))


def test_selector_error_is_value_error():
    assert issubclass(SelectorError, ValueError)


# --------------------------------------------------------------------------- get_selector


def test_get_selector_by_name_and_callable():
    for name in ALL:
        assert get_selector(name) is SELECTORS[name]

    def custom(probs, k_max, k_min=1):
        return mask_from_k(torch.full((probs.shape[0],), k_max), k_max)

    assert get_selector(custom) is custom


def test_get_selector_unknown_name_lists_valid_names():
    with pytest.raises(SelectorError) as ei:
        get_selector("knee")
    msg = str(ei.value)
    assert msg == "unknown selector 'knee'; valid selectors: cumsum, entropy, gap_ratio, kneedle, layer_k, min_p, random_k, topk"
    assert "\n" not in msg
    with pytest.raises(SelectorError, match="must be a name .* or a callable, got int"):
        get_selector(3)


# --------------------------------------------------------------------------- validate_params


def test_validate_params_accepts_good_params():
    assert validate_params("topk", {"k_max": 8, "k": 2}, 64) is None
    assert validate_params("kneedle", {"k_max": 8, "k_min": 2}, 64) is None
    assert validate_params("cumsum", {"k_max": 8, "threshold": 0.0}, 64) is None
    assert validate_params("cumsum", {"threshold": 1.0}, 64) is None
    assert validate_params("entropy", {}, 8) is None
    assert validate_params("gap_ratio", {"ratio": 1.0}, 8) is None
    assert validate_params("min_p", {"alpha": 1.0, "k_max": 8}, 8) is None


def _msg(name, params, num_experts=64):
    with pytest.raises(SelectorError) as ei:
        validate_params(name, params, num_experts)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_validate_params_error_messages():
    assert _msg("cumsum", {"k_max": 8, "thresh": 0.9}) == (
        "selector 'cumsum': unknown parameter(s) thresh; valid parameters: k_max, k_min, threshold"
    )
    assert _msg("kneedle", {"ratio": 2, "alpha": 0.1}) == (
        "selector 'kneedle': unknown parameter(s) alpha, ratio; valid parameters: k_max, k_min"
    )
    assert _msg("kneedle", {"k_max": 80}) == (
        "selector 'kneedle': k_max=80 exceeds the number of experts E=64"
    )
    assert _msg("entropy", {"k_max": 4, "k_min": 5}) == "selector 'entropy': k_min=5 is greater than k_max=4"
    assert _msg("topk", {"k_max": 8, "k": 0}) == "selector 'topk': k must be >= 1, got 0"
    assert _msg("topk", {"k_max": 8, "k": 9}) == "selector 'topk': k=9 must be in [k_min=1, k_max=8]"
    assert _msg("cumsum", {"threshold": 1.1}) == "selector 'cumsum': threshold must be in [0, 1], got 1.1"
    assert _msg("cumsum", {"threshold": -0.1}) == "selector 'cumsum': threshold must be in [0, 1], got -0.1"
    assert _msg("gap_ratio", {"ratio": 0.9}) == "selector 'gap_ratio': ratio must be >= 1, got 0.9"
    assert _msg("min_p", {"alpha": 1.5}) == "selector 'min_p': alpha must be in [0, 1], got 1.5"
    assert _msg("min_p", {"alpha": "0.1"}) == "selector 'min_p': alpha must be a real number, got str '0.1'"
    assert _msg("topk", {"k_max": 8.5}) == "selector 'topk': k_max must be an int, got float 8.5"
    assert _msg("nope", {}) == (
        "unknown selector 'nope'; valid selectors: cumsum, entropy, gap_ratio, kneedle, layer_k, min_p, random_k, topk"
    )
    # without k_max, bounds are checked against num_experts
    assert _msg("kneedle", {"k_min": 9}, 8) == "selector 'kneedle': k_min=9 is greater than k_max=8"


# --------------------------------------------------------------------------- random_k


def test_random_k_by_hand():
    """k = k_min + the slots after k_min whose draw is below keep; the draws are the documented hash."""
    p = P(CURVE, [0.2, 0.2, 0.2, 0.2, 0.1, 0.1])
    q = p.double()  # rows already sorted
    mix = (q * torch.arange(1, 7, dtype=torch.float64)).sum(1, keepdim=True)
    draws = torch.frac(torch.sin(mix * 7919.0 + torch.arange(4, dtype=torch.float64) * 12.9898 + 3 * 78.233)
                       * 43758.5453).abs()
    expected = (1 + ((draws < 0.5) & (torch.arange(4) >= 1)).sum(1)).tolist()
    assert ks(random_k(p, 4, keep=0.5, seed=3)) == expected
    assert ks(random_k(p, 4, keep=0.0)) == [1, 1] and ks(random_k(p, 4, keep=1.0)) == [4, 4]
    assert ks(random_k(p, 4, k_min=2, keep=0.0)) == [2, 2]
    assert random_k(p, 4, keep=0.5, seed=3).tolist() == random_k(p, 4, keep=0.5, seed=3).tolist()  # no state
    many = torch.softmax(torch.randn(4000, 16, generator=torch.Generator().manual_seed(0)), -1)
    mean = random_k(many, 8, keep=0.25).sum(-1).double().mean().item()
    assert mean == pytest.approx(1 + 0.25 * 7, abs=0.1)  # k_min + keep (k_max - k_min), 4000 tokens
    assert is_prefix(random_k(many, 8, keep=0.25))
    with pytest.raises(SelectorError, match="keep must be in"):
        random_k(p, 4, keep=1.5)


def test_layer_k_by_hand():
    p = P(CURVE, CURVE)
    assert ks(layer_k(p, 4, ks=[3, 1, 4], position=0)) == [3, 3]
    assert ks(layer_k(p, 4, ks=[3, 1, 4], position=1)) == [1, 1]
    assert ks(layer_k(p, 4)) == [4, 4]  # no ks: k_max everywhere
    assert ks(layer_k(p, 4, k_min=2, ks=[1], position=0)) == [2, 2]  # clamped
    validate_params("layer_k", {"k_max": 4, "ks": [1, 2]}, 6)
    with pytest.raises(SelectorError, match="every k in ks must be >= 1"):
        validate_params("layer_k", {"k_max": 4, "ks": [0, 2]}, 6)
    with pytest.raises(SelectorError, match="ks must be a list"):
        validate_params("layer_k", {"k_max": 4, "ks": 3}, 6)
