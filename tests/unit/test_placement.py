"""Expert-parallel placement simulation: hand-computed placements and scores on one layer's loads."""
from __future__ import annotations

import numpy as np
import pytest

from runner.profiler import placement as pl

LOADS = np.array([8, 1, 1, 1, 1, 1, 1, 2])  # one hot expert (0), one warm (7)


def test_fixed_layouts_by_hand():
    assert pl.contiguous(8, 2).expert_ranks == ((0,),) * 4 + ((1,),) * 4
    assert pl.round_robin(8, 4).expert_ranks == tuple((e % 4,) for e in range(8))
    # contiguous: rank 0 = 8+1+1+1 = 11, rank 1 = 1+1+1+2 = 5, mean 8
    assert pl.contiguous(8, 2).score(LOADS) == dict(imbalance=11 / 8, balancedness=8 / 11, busiest_rank_tokens=11.0)
    # round robin: rank 0 = experts 0,2,4,6 = 11, rank 1 = experts 1,3,5,7 = 5
    assert pl.round_robin(8, 2).score(LOADS)["imbalance"] == 11 / 8


def test_balanced_keeps_e_over_n_experts_per_rank():
    """LPT with 4 slots a rank: 0 -> r0 (8), 7 -> r1 (2), 1, 2, 3 -> r1 (5, full), 4, 5, 6 -> r0 (11): the slot limit
    leaves it no better than contiguous here."""
    placed = pl.balanced(LOADS, 2)
    assert placed.expert_ranks == ((0,), (1,), (1,), (1,), (0,), (0,), (0,), (1,))
    assert list(placed.rank_loads(LOADS)) == [11.0, 5.0]


def test_one_redundant_replica_of_the_hot_expert_balances_it():
    """Expert 0 gets the replica (8/1 is the highest load per replica): physical loads 4, 4, 2, 1 x 6 over 5 slots a
    rank pack to 8 and 8."""
    placed = pl.balanced(LOADS, 2, redundant=1)
    assert placed.name == "balanced+r1" and sorted(placed.expert_ranks[0]) == [0, 1]
    assert list(placed.rank_loads(LOADS)) == [8.0, 8.0]
    assert placed.score(LOADS) == dict(imbalance=1.0, balancedness=1.0, busiest_rank_tokens=8.0)


@pytest.mark.parametrize("seed", range(5))
def test_every_placement_conserves_load_and_slots(seed):
    loads = np.random.default_rng(seed).integers(0, 1000, size=64)
    for ep in pl.ep_sizes(64):
        for placed in pl.placements(loads, ep, redundant=(1, 8)):
            assert placed.rank_loads(loads).sum() == pytest.approx(loads.sum())
            held = np.bincount([r for ranks in placed.expert_ranks for r in ranks], minlength=ep)
            extra = int(placed.name.partition("+r")[2] or 0)
            assert held.max() <= -(-(64 + extra) // ep) and all(placed.expert_ranks)
            assert placed.score(loads)["imbalance"] >= 1.0


def test_ep_sizes_are_divisors_of_the_expert_count():
    assert pl.ep_sizes(8) == [2, 4, 8] and pl.ep_sizes(60) == [2, 4] and pl.ep_sizes(256) == [2, 4, 8, 16, 32, 64]
