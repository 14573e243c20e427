"""From per-seed numbers to a plain verdict on a claim of the paper.

Arms of a study share their seeds (same initial weights and data order per seed), so a claim
"A beats B" is judged on the per-seed differences ``A_i - B_i`` of a lower-is-better metric:
their mean ``d`` and a 95% Student-t interval ``d ± h``. With a tolerance ``tol`` (a small
fraction of B's mean, the smallest difference worth calling a difference):

- ``better`` (A beats B): reproduced if ``d + h < 0``; not reproduced if ``d - h > -tol`` (any
  gain is smaller than ``tol``, or A is worse); otherwise inconclusive.
- ``no_worse`` (A matches or beats B): reproduced if ``d + h <= tol``; not reproduced if
  ``d - h > tol``; otherwise inconclusive.

One seed gives no interval: always inconclusive. The rules are fixed before any run.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this scale"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
KINDS = ("better", "no_worse")
DEFAULT_TOLERANCE = 0.01  # relative to B's mean

# two-sided 95% quantiles of Student's t, by degrees of freedom
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(degrees_of_freedom: int) -> float:
    if degrees_of_freedom < 1:
        return math.inf
    return _T95[degrees_of_freedom - 1] if degrees_of_freedom <= len(_T95) else 1.96


@dataclasses.dataclass(frozen=True)
class Interval:
    """Mean paired difference A - B and the half-width of its 95% interval (``inf`` for n = 1)."""

    difference: float
    half_width: float
    count: int

    @property
    def low(self) -> float:
        return self.difference - self.half_width

    @property
    def high(self) -> float:
        return self.difference + self.half_width


def paired_interval(a: Sequence[float], b: Sequence[float]) -> Interval:
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same non-zero number of seeds on both sides, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return Interval(mean, math.inf, 1)
    spread = statistics.stdev(differences) / math.sqrt(len(differences))
    return Interval(mean, t95(len(differences) - 1) * spread, len(differences))


def judge(kind: str, interval: Interval, tolerance: float) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown claim kind {kind!r}; choose one of {KINDS}")
    if kind == "better":
        if interval.high < 0:
            return REPRODUCED
        return NOT_REPRODUCED if interval.low > -tolerance else INCONCLUSIVE
    if interval.high <= tolerance:
        return REPRODUCED
    return NOT_REPRODUCED if interval.low > tolerance else INCONCLUSIVE


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def per_seed_mean(columns: Sequence[Sequence[float]]) -> list[float]:
    """Seed-wise mean over several arms (e.g. every middle layer of the sweep)."""
    return [statistics.fmean(values) for values in zip(*columns, strict=True)]
