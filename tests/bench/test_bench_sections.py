"""The whole run's paired estimate: per-step ratios to the same step's baseline, median per kept length."""
from __future__ import annotations

import pytest

from random_ltd.bench.sections import paired_saving


def test_steady_machine_gives_the_plain_saving():
    baseline = [1.0] * 6
    times = [0.5, 0.5, 0.8, 0.8, 0.8, 1.0]
    assert paired_saving(times, baseline, [16, 16, 32, 32, 32, None]) == pytest.approx(1 - sum(times) / 6)


def test_a_drift_that_slows_both_arms_cancels():
    # the machine runs at half speed for the second half of the run: every step's ratio stays 0.5
    baseline = [1.0, 1.0, 2.0, 2.0]
    times = [0.5, 0.5, 1.0, 1.0]
    assert paired_saving(times, baseline, [16] * 4) == pytest.approx(0.5)
    assert 1 - sum(times) / sum(baseline) == pytest.approx(0.5)  # equal here; differs once kept lengths differ
    uneven = paired_saving([0.5, 0.5, 1.6, 1.6], baseline, [16, 16, 96, 96])
    assert uneven == pytest.approx(1 - (2 * 0.5 + 2 * 0.8) / 4)


def test_a_spike_in_one_step_is_replaced_by_its_groups_median():
    baseline = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    times = [0.4, 0.4, 5.0, 0.7, 0.7, 0.7]
    assert paired_saving(times, baseline, [16, 16, 16, 32, 32, 32]) == pytest.approx(1 - (3 * 0.4 + 3 * 0.7) / 6)


def test_groups_follow_the_kept_length_not_the_position():
    baseline = [1.0, 1.0, 1.0, 1.0]
    times = [0.1, 0.3, 0.2, 0.6]
    assert paired_saving(times, baseline, [8, 8, 16, 16]) == pytest.approx(1 - (2 * 0.2 + 2 * 0.4) / 4)
    assert paired_saving(times, baseline, [8, 16, 8, 16]) == pytest.approx(1 - (2 * 0.15 + 2 * 0.45) / 4)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="as many times"):
        paired_saving([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [8, 16])
    with pytest.raises(ValueError, match="at least one"):
        paired_saving([], [], [])
