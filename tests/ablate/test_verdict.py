"""The verdict rules on constructed per-seed numbers, and the interval against a hand computation."""
from __future__ import annotations

import math
import statistics

import pytest

from random_ltd.ablate import verdict
from random_ltd.ablate.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Interval, judge, paired_interval


def test_t_quantiles_match_known_values():
    assert verdict.t95(1) == pytest.approx(12.706)
    assert verdict.t95(2) == pytest.approx(4.303)
    assert verdict.t95(30) == pytest.approx(2.042)
    assert verdict.t95(1000) == pytest.approx(1.96)
    assert verdict.t95(0) == math.inf


def test_paired_interval_by_hand():
    a, b = [3.0, 3.2, 2.9], [3.1, 3.5, 3.0]
    differences = [-0.1, -0.3, -0.1]
    interval = paired_interval(a, b)
    assert interval.difference == pytest.approx(sum(differences) / 3)
    assert interval.half_width == pytest.approx(4.303 * statistics.stdev(differences) / math.sqrt(3))
    assert interval.count == 3


def test_one_seed_has_no_interval_and_is_inconclusive():
    interval = paired_interval([1.0], [2.0])
    assert interval.half_width == math.inf
    assert judge("better", interval, 0.01) == INCONCLUSIVE
    assert judge("no_worse", interval, 0.01) == INCONCLUSIVE


def test_pairing_removes_the_shared_seed_effect():
    seed_effect = [0.0, 1.0, 2.0]
    a = [3.0 + e for e in seed_effect]
    b = [3.1 + e for e in seed_effect]
    interval = paired_interval(a, b)
    assert interval.difference == pytest.approx(-0.1) and interval.half_width == pytest.approx(0.0, abs=1e-12)
    assert judge("better", interval, 0.01) == REPRODUCED


@pytest.mark.parametrize("difference, half_width, expected", [
    (-0.10, 0.05, REPRODUCED),        # the whole interval below 0
    (-0.10, 0.20, INCONCLUSIVE),      # straddles 0, could be a real gain
    (0.00, 0.005, NOT_REPRODUCED),    # precisely no gain: any gain is below tol
    (0.20, 0.05, NOT_REPRODUCED),     # A clearly worse
    (-0.005, 0.004, REPRODUCED),      # tiny but certain gain: still reproduced
])
def test_better(difference, half_width, expected):
    assert judge("better", Interval(difference, half_width, 3), tolerance=0.01) == expected


@pytest.mark.parametrize("difference, half_width, expected", [
    (0.000, 0.005, REPRODUCED),       # within tol
    (-0.20, 0.05, REPRODUCED),        # A better: also no worse
    (0.005, 0.02, INCONCLUSIVE),      # upper end above tol, lower end below
    (0.05, 0.02, NOT_REPRODUCED),     # A worse by more than tol, with confidence
])
def test_no_worse(difference, half_width, expected):
    assert judge("no_worse", Interval(difference, half_width, 3), tolerance=0.01) == expected


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        paired_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        judge("worse", Interval(0, 1, 2), 0.01)


def test_per_seed_mean_and_mean_std():
    assert verdict.per_seed_mean([[1.0, 2.0], [3.0, 4.0]]) == [2.0, 3.0]
    assert verdict.mean_std([1.0]) == (1.0, 0.0)
    assert verdict.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
