"""Binary search over a monotone predicate: the one search the schedules, the planner and the
training program share."""
from __future__ import annotations

import bisect
from collections.abc import Callable


def first_true(predicate: Callable[[int], bool], low: int, high: int) -> int:
    """The smallest ``i`` in ``[low, high)`` with ``predicate(i)``, or ``high`` when there is none.

    ``predicate`` must be monotone (false, then true from some point on); it is called
    O(log(high - low)) times, never on ``high``.
    """
    return low + bisect.bisect_left(range(low, high), True, key=predicate)
