"""Random-LTD's wall-clock saving from arms stepped in lockstep: a paired estimate and its spread.

In lockstep every round steps each arm once, seconds apart, so a round's ratio of step times
(random-LTD over baseline) cancels the load of the machine, which moves over minutes; the median
ratio among the rounds of one kept length removes the spikes (another process taking the core
during one step). Every baseline step does the same work, so the run's saving is one minus the
mean of the per-round ratios. Pure functions of the recorded step times.
"""
from __future__ import annotations

import dataclasses
import statistics

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rounds:
    """One seed's step times: ``times[t]`` and ``baseline_times[t]`` were measured in round ``t``,
    ``kept[t]`` is random-LTD's kept length at its step ``t``. Either arm may have more steps
    (``--budget-ratio``); steps without a partner are counted as described in ``units``."""

    times: tuple[float, ...]
    baseline_times: tuple[float, ...]
    kept: tuple[int, ...]

    @property
    def paired(self) -> int:
        return min(len(self.times), len(self.baseline_times))

    def ratios(self) -> list[float]:
        return [self.times[t] / self.baseline_times[t] for t in range(self.paired)]

    def unpaired_units(self) -> float:
        """Random-LTD's steps past the baseline's last, in baseline steps (their time over the
        baseline's median step time)."""
        if len(self.times) <= len(self.baseline_times):
            return 0.0
        return sum(self.times[len(self.baseline_times):]) / statistics.median(self.baseline_times)


def paired_saving(seeds: list[Rounds]) -> float:
    """1 - (random-LTD's time in baseline steps) / (the baseline's steps), pooled over seeds."""
    ratios, kept = _pooled(seeds)
    return _saving(ratios, kept, seeds)


def bootstrap_interval(seeds: list[Rounds], level: float = 0.95, resamples: int = 1000,
                       seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile interval of ``paired_saving`` over rounds resampled with replacement."""
    ratios, kept = _pooled(seeds)
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(resamples):
        chosen = rng.integers(0, len(ratios), size=len(ratios))
        estimates.append(_saving(ratios[chosen], kept[chosen], seeds))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def estimate(seeds: list[Rounds]) -> dict:
    """The paired saving, its 95% bootstrap interval and the number of paired rounds."""
    low, high = bootstrap_interval(seeds)
    return {"saving": paired_saving(seeds), "interval": [low, high], "rounds": sum(s.paired for s in seeds)}


def _pooled(seeds: list[Rounds]) -> tuple[np.ndarray, np.ndarray]:
    ratios = [ratio for rounds in seeds for ratio in rounds.ratios()]
    kept = [k for rounds in seeds for k in rounds.kept[:rounds.paired]]
    if not ratios:
        raise ValueError("no round with a step of both arms: nothing to pair")
    return np.asarray(ratios), np.asarray(kept)


def _saving(ratios: np.ndarray, kept: np.ndarray, seeds: list[Rounds]) -> float:
    """Each paired round counts at the median ratio of the rounds of its kept length."""
    lengths, counts = np.unique(kept, return_counts=True)
    medians = np.array([np.median(ratios[kept == length]) for length in lengths])
    units = float(medians @ counts) + sum(rounds.unpaired_units() for rounds in seeds)
    return 1.0 - units / sum(len(rounds.baseline_times) for rounds in seeds)
