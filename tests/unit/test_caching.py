"""Expert-cache simulation (runner/profiler/caching.py, runner/results/cache_replay.py) against caches simulated by hand and by a
plain per-capacity simulator written here, adjacent-token overlap, and the routing diff (runner/baseline/routing_diff.py) on
traces built in the test."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from runner.results import cache_replay as cache
from runner.baseline import routing_diff
from runner.profiler import caching

from helpers.caches import simulate_one


# 0 1 0 2 1 0 2 2 1 over E = 3, worked by hand (docs/metrics.md#expert-cache-simulation):
# LRU C=2: hits at 2 (0) and 7 (2); at 3 the LRU of {0,1} is 1, at 4 of {0,2} it is 0, at 5 of {2,1} 2, at 6 of {1,0} 1.
# LFU C=2: at 3 evicts 1 (count 1 < 2), at 4 evicts 2 (1 < 2), at 6 evicts 1 (2 < 3): hits at 2, 5, 7.
# OPT C=2: at 3 evicts 0 (next at 5, 1 next at 4), at 5 evicts 1 (next at 8, 2 at 6): hits at 2, 4, 6, 7.
HAND = [0, 1, 0, 2, 1, 0, 2, 2, 1]
HAND_HITS = {"lru": [1, 2, 6], "lfu": [1, 3, 6], "opt": [1, 4, 6]}  # C = 1, 2, 3 (C = E: all but 3 first uses)


@pytest.mark.parametrize("policy", caching.POLICIES)
def test_hand_simulated_hits_at_every_capacity(policy):
    assert caching.simulate(np.array(HAND), 3, [policy])[policy].tolist() == HAND_HITS[policy]
    assert [simulate_one(HAND, c, policy) for c in (1, 2, 3)] == HAND_HITS[policy]


def test_lfu_ties_go_to_the_least_recently_used():
    # 1 0 2 1, C = 2: at 2 experts 1 and 0 have one reference each; 1 was used longer ago, so it goes and 1 misses
    # again (a lowest-id tie rule would evict 0 and hit)
    assert caching.simulate(np.array([1, 0, 2, 1]), 3, ["lfu"])["lfu"].tolist() == [0, 0, 1]
    # 0 0 1 2 0: at 3, 0 has two references, 1 one: LFU keeps 0 (LRU would evict it)
    hits = caching.simulate(np.array([0, 0, 1, 2, 0]), 3)
    assert hits["lfu"][1] == 2 and hits["lru"][1] == 1


def test_opt_ties_among_experts_never_used_again_do_not_change_its_hits():
    # 0 1 2 2 3 0: at C = 2, 1 (never used again) goes at 2 and 2 (never again) at 4; at C = 3, 1 and 2 are both
    # never used again at 4: either may go, the hits are the same
    assert caching.simulate(np.array([0, 1, 2, 2, 3, 0]), 4, ["opt"])["opt"].tolist() == [1, 2, 2, 2]
    assert [simulate_one([0, 1, 2, 2, 3, 0], c, "opt") for c in (1, 2, 3, 4)] == [1, 2, 2, 2]


def test_stack_passes_equal_a_cache_simulated_per_capacity_on_random_strings():
    rng = np.random.default_rng(7)
    for trial in range(60):
        experts = int(rng.integers(1, 7))
        refs = (rng.zipf(1.4, int(rng.integers(1, 40))) % experts) if trial % 2 else rng.integers(0, experts, 30)
        hits = caching.simulate(refs, experts)
        for policy in caching.POLICIES:
            expected = [simulate_one(refs.tolist(), c, policy) for c in range(1, experts + 1)]
            assert hits[policy].tolist() == expected, (policy, refs.tolist())
        # C = E: only first references miss; OPT is a bound no policy beats
        assert {int(h[-1]) for h in hits.values()} == {len(refs) - len(np.unique(refs))}
        assert (hits["opt"] >= hits["lru"]).all() and (hits["opt"] >= hits["lfu"]).all()


def test_lru_stack_distances_without_a_loop_equal_the_stack_pass():
    refs = np.random.default_rng(3).integers(0, 16, 5000)
    caching._BLOCK_CELLS, saved = 16 * 37, caching._BLOCK_CELLS  # blocks of 37 references: the carry between blocks
    try:
        blocked = caching.lru_depths(refs, 16)
    finally:
        caching._BLOCK_CELLS = saved
    assert (blocked == caching.priority_depths(refs, 16, "lru")).all()
    assert (caching.lru_depths(refs, 16) == blocked).all()
    # the depth of a repeat is 1 + the distinct experts in between
    assert caching.lru_depths(np.array([0, 1, 2, 1, 0]), 3).tolist()[3:] == [2, 3]


def trace(rows: list[tuple]) -> pd.DataFrame:
    """(phase, layer, batch, row, position, experts[, weights]) tuples as trace rows."""
    out = pd.DataFrame([r[:6] for r in rows], columns=["phase", "layer", "batch", "row", "position", "experts"])
    out["experts"] = [np.array(e, dtype=np.int16) for e in out["experts"]]
    out["expert_weights"] = [np.array(r[6] if len(r) > 6 else [1.0 / len(r[5])] * len(r[5]), np.float16)
                             for r in rows]
    out["token_id"] = pd.array([10 * r[3] + r[4] for r in rows], dtype="Int64")
    out["run_id"] = "r"
    return out.astype({name: "Int32" for name in ("layer", "batch", "row", "position")})  # as the table reads


def test_serving_order_is_per_sequence_in_prefill_and_rows_interleaved_in_decode():
    # two rows, two tokens each, k = 1: row 0 uses expert 0 twice, row 1 expert 1 twice
    rows = [(phase, 0, 0, r, p, [r]) for phase in ("prefill", "decode") for r in (0, 1) for p in (0, 1)]
    frame = cache.cache_frame(trace(rows), {0: 2})
    lru = frame[frame["policy"] == "lru"].set_index(["phase", "capacity"])["hits"]
    assert lru[("prefill", 1)] == 2  # 0 0 1 1: one sequence after the other
    assert lru[("decode", 1)] == 0 and lru[("decode", 2)] == 2  # 0 1 0 1: the rows interleaved per step
    assert set(frame["cold_misses"]) == {2} and set(frame["references"]) == {4}


def test_adjacent_token_overlap_pairs_steps_of_one_row_and_its_random_value_is_k_over_e():
    rows = [("decode", 3, 0, 0, 8, [0, 1]), ("decode", 3, 0, 1, 8, [3, 0]), ("decode", 3, 0, 0, 9, [1, 2]),
            ("decode", 3, 0, 1, 9, [2, 1]), ("decode", 3, 0, 0, 10, [2, 1])]
    (local,) = cache.locality_frame(trace(rows), {3: 8}).to_dict("records")
    # row 0: {0,1}->{1,2} 1/2, {1,2}->{2,1} 2/2; row 1: {3,0}->{2,1} 0: never across rows
    assert local["pairs"] == 3 and local["overlap"] == pytest.approx(0.5) and local["overlap_random"] == 0.25


def test_routing_diff_of_a_trace_with_itself_agrees_everywhere():
    rng = np.random.default_rng(0)
    rows = [(phase, layer, b, r, p, rng.choice(8, 2, replace=False).tolist(), rng.random(2).tolist())
            for phase, positions in (("prefill", range(4)), ("decode", range(4, 6))) for layer in (0, 2)
            for b in range(2) for r in range(2) for p in positions]
    a = trace(rows)
    frame = routing_diff.diff_frame(a, a.copy(), 2, 2)
    assert (frame[["overlap", "exact", "top1"]] == 1).all().all()
    assert frame["tokens"].tolist() == [16, 16, 8, 8] and list(frame["phase"]) == ["prefill"] * 2 + ["decode"] * 2
    assert routing_diff.first_divergence(frame) == {"prefill": None, "decode": None}
    # batch 2 vs batch 1: the same sequences under other (batch, row) pairs still match
    single = a.assign(batch=a["batch"] * 2 + a["row"], row=0)
    assert (routing_diff.diff_frame(a, single, 2, 1)[["exact", "tokens"]].to_numpy()
            == frame[["exact", "tokens"]].to_numpy()).all()


def test_routing_diff_of_a_perturbed_trace():
    rows = [("prefill", layer, 0, 0, p, [p % 4, 4 + p % 4], [0.7, 0.3]) for layer in (0, 1) for p in range(4)]
    a = trace(rows)
    b = a.copy()
    at = b.index[(b["layer"] == 1) & (b["position"] == 2)][0]
    b.at[at, "experts"] = np.array([4 + 2, 5], np.int16)  # one expert changed, and the heavier one swapped
    b.at[at, "expert_weights"] = np.array([0.6, 0.4], np.float16)
    frame = routing_diff.diff_frame(a, b, 1, 1).set_index("layer")
    assert frame.loc[0, "exact"] == 1 and frame.loc[1, "exact"] == 0.75
    assert frame.loc[1, "overlap"] == pytest.approx((3 + 0.5) / 4) and frame.loc[1, "top1"] == 0.75
    assert routing_diff.first_divergence(frame.reset_index()) == {"prefill": 1}
    # a token id that differs: that position and the sequence's later ones are other inputs, not compared
    b = a.copy()
    b.loc[b["position"] == 1, "token_id"] = 99
    assert routing_diff.diff_frame(a, b, 1, 1)["tokens"].tolist() == [1, 1]


def test_top1_is_the_heaviest_expert_ties_the_earlier_slot():
    assert routing_diff.top1([[3, 1], [2, 5], [], [7]], [[0.2, 0.8], [0.5, 0.5], [], [1.0]]).tolist() == [1, 2, -1, 7]
