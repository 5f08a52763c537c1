"""Choosing a deployment: the best priority first, weighted within it."""

from __future__ import annotations

import random
from collections import Counter

from proxy.route import Target, pick_target


def target(pk: int, priority: int, weight: int) -> Target:
    return Target(pk, f"p{pk}", "mock", "", "", f"m{pk}", priority, weight)


def test_lowest_priority_number_wins() -> None:
    targets = (target(1, 1, 100), target(2, 0, 1))
    assert {pick_target(targets, rng=random.Random(seed)).deployment_pk for seed in range(50)} == {2}


def test_weights_share_traffic_within_a_priority() -> None:
    targets = (target(1, 0, 3), target(2, 0, 1))
    rng = random.Random(7)
    counts = Counter(pick_target(targets, rng=rng).deployment_pk for _ in range(4000))
    assert 0.70 < counts[1] / 4000 < 0.80


def test_zero_weights_fall_back_to_even_shares() -> None:
    targets = (target(1, 0, 0), target(2, 0, 0))
    rng = random.Random(1)
    assert set(pick_target(targets, rng=rng).deployment_pk for _ in range(100)) == {1, 2}
