import random

import pytest

from random_ltd.train.timing import Rounds, bootstrap_interval, estimate, paired_saving


def loaded_rounds(ratio_by_kept: dict[int, float], steps: int, seed: int = 0, noise: float = 0.0) -> Rounds:
    """Rounds on a machine whose speed halves part-way (another process takes the core): both arms
    of a round are slowed alike."""
    rng = random.Random(seed)
    kept = [min(ratio_by_kept, key=lambda k: abs(k - (8 + 24 * step / steps))) for step in range(steps)]
    load = [1.0 if step < steps // 3 else 2.0 for step in range(steps)]
    baseline = [0.1 * slow * (1 + noise * rng.random()) for slow in load]
    times = [0.1 * ratio_by_kept[k] * slow * (1 + noise * rng.random()) for k, slow in zip(kept, load, strict=True)]
    return Rounds(tuple(times), tuple(baseline), tuple(kept))


def test_the_paired_saving_cancels_load_that_slows_both_arms_of_a_round():
    ratios = {8: 0.5, 16: 0.7, 24: 0.9, 32: 1.0}
    rounds = loaded_rounds(ratios, 40)
    expected = 1 - sum(ratios[k] for k in rounds.kept) / 40
    assert paired_saving([rounds]) == pytest.approx(expected, abs=1e-12)
    summed = 1 - sum(rounds.times) / sum(rounds.baseline_times)
    assert abs(summed - expected) > 0.01  # the load weighs the late, full-length steps more


def test_spikes_in_single_steps_move_the_median_not_the_estimate():
    ratios = {8: 0.5, 32: 1.0}
    rounds = loaded_rounds(ratios, 30)
    spiked = Rounds(tuple(t * (5 if i in (3, 20) else 1) for i, t in enumerate(rounds.times)),
                    rounds.baseline_times, rounds.kept)
    assert paired_saving([spiked]) == pytest.approx(paired_saving([rounds]), abs=1e-12)


def test_the_interval_holds_the_estimate_and_narrows_with_more_rounds():
    ratios = {8: 0.5, 16: 0.7, 24: 0.9, 32: 1.0}
    few = [loaded_rounds(ratios, 20, noise=0.2)]
    many = [loaded_rounds(ratios, 400, noise=0.2)]
    for seeds in (few, many):
        low, high = bootstrap_interval(seeds)
        assert low <= paired_saving(seeds) <= high
    widths = [high - low for low, high in (bootstrap_interval(many), bootstrap_interval(few))]
    assert widths[0] < widths[1]
    assert estimate(many)["rounds"] == 400


def test_steps_without_a_partner_count_against_the_baselines_median_step():
    longer = Rounds((0.05, 0.05, 0.1, 0.1), (0.1, 0.1), (8, 8, 32, 32))  # random-LTD trains 4 steps, baseline 2
    assert paired_saving([longer]) == pytest.approx(1 - (0.5 + 0.5 + 1 + 1) / 2)
    shorter = Rounds((0.05,), (0.1, 0.1), (8,))
    assert paired_saving([shorter]) == pytest.approx(1 - 0.5 / 2)
    with pytest.raises(ValueError, match="nothing to pair"):
        paired_saving([Rounds((), (0.1,), ())])


def test_seeds_pool_their_rounds():
    one, two = Rounds((0.05,), (0.1,), (8,)), Rounds((0.09, 0.1), (0.1, 0.1), (16, 32))
    assert paired_saving([one, two]) == pytest.approx(1 - (0.5 + 0.9 + 1.0) / 3)
