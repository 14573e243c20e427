"""``first_true``: the first index where a monotone predicate turns true, by binary search."""
from __future__ import annotations

import pytest

from random_ltd.search import first_true


@pytest.mark.parametrize("low,high", [(0, 0), (0, 1), (3, 10), (-4, 7), (1, 100)])
def test_matches_a_linear_scan_with_few_calls(low, high):
    for threshold in range(low - 2, high + 3):
        calls = []

        def reached(i: int, calls: list = calls, threshold: int = threshold) -> bool:
            calls.append(i)
            return i >= threshold

        expected = next((i for i in range(low, high) if i >= threshold), high)
        assert first_true(reached, low, high) == expected
        assert high not in calls and len(calls) <= max(1, (high - low).bit_length())
