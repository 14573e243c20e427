"""Kept-length schedules: pure functions of the step (counted from 0) with a small ``state_dict``.

Every schedule is monotone non-decreasing, never above ``seq_len``, and answers
``schedule(step) -> kept length``. The same object serves training (``Driver``), planning,
plotting and tests. DeepSpeed configs are read by ``random_ltd.deepspeed_config``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from numbers import Real
from typing import Any, Protocol, runtime_checkable

from random_ltd.errors import ConfigError
from random_ltd.search import first_true


@runtime_checkable
class KeptLengthSchedule(Protocol):
    seq_len: int

    def __call__(self, step: int) -> int: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def check_int(field: str, value: Any, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (bools and non-integral numbers are refused)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or value != int(value):
        raise ConfigError(field, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(field, f"must be >= {minimum}, got {value!r}")
    return int(value)


def check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConfigError("step", f"must be an integer >= 0, got {step!r}")
    return step


def change_points(schedule: KeptLengthSchedule, total_steps: int) -> list[tuple[int, int]]:
    """``[(step, kept), ...]`` at step 0 and at every step < ``total_steps`` where the kept length
    changes. Binary search on the monotone schedule: O(changes * log(total_steps)) calls."""
    total_steps = check_int("total_steps", total_steps)
    if hasattr(schedule, "change_points"):
        return schedule.change_points(total_steps)
    points = [(0, schedule(0))]
    while True:
        step, kept = points[-1]
        changed = first_true(lambda later, kept=kept: schedule(later) != kept, step + 1, total_steps)
        if changed >= total_steps:
            return points
        points.append((changed, schedule(changed)))


def first_full_step(kept_at: Callable[[int], int], seq_len: int, upper: int) -> int | None:
    """The first step in [0, upper] at which the monotone ``kept_at(step)`` reaches ``seq_len``."""
    if kept_at(upper) < seq_len:
        return None
    return first_true(lambda step: kept_at(step) >= seq_len, 0, upper)


class MSLG:
    """Monotonic sequence length growth (paper Section 3.2).

    The kept length starts at ``start`` and grows by ``increment`` in one of three ways:

    - every ``every_steps`` steps;
    - every ``every_tokens`` training tokens (``tokens_per_step`` = sequences x length per step,
      given here, by ``resolve(tokens_per_step=...)`` or by the ``Driver``);
    - so that it reaches ``seq_len`` exactly at step ``full_at`` (an int), or at the fraction
      ``full_at`` (a float in (0, 1]) of ``total_steps``. As in the paper the interval is
      T_dec = T_0 / (a_0 / s_dec), which may be fractional: the j-th increment lands at the
      first step t with t >= j * T_dec, and the last one exactly at T_0.

    ``kept(t) = start + increment * floor(t * rate)``, capped at ``seq_len``; with
    ``multiple_of=m`` it is rounded down to a multiple of m (but never below ``start``, and
    ``seq_len`` itself is kept even if it is not a multiple). Exact rational arithmetic.
    """

    def __init__(
        self,
        seq_len: int,
        start: int,
        increment: int,
        every_steps: int | None = None,
        every_tokens: float | None = None,
        full_at: int | float | None = None,
        multiple_of: int | None = None,
        tokens_per_step: int | None = None,
        total_steps: int | None = None,
    ):
        self._configure(
            dict(seq_len=seq_len, start=start, increment=increment, every_steps=every_steps,
                 every_tokens=every_tokens, full_at=full_at, multiple_of=multiple_of,
                 tokens_per_step=tokens_per_step, total_steps=total_steps)
        )

    def _configure(self, config: dict) -> None:
        self.seq_len = check_int("seq_len", config["seq_len"])
        self.start = check_int("start", config["start"])
        if self.start > self.seq_len:
            raise ConfigError("start", f"{self.start} is longer than seq_len={self.seq_len}")
        self.increment = check_int("increment", config["increment"])
        self.multiple_of = check_int("multiple_of", config["multiple_of"], optional=True)
        self.tokens_per_step = check_int("tokens_per_step", config["tokens_per_step"], optional=True)
        self.total_steps = check_int("total_steps", config["total_steps"], optional=True)
        chosen = [name for name in ("every_steps", "every_tokens", "full_at") if config[name] is not None]
        if len(chosen) != 1:
            raise ConfigError("every_steps", "give exactly one of every_steps, every_tokens, full_at"
                              + (f" (got {', '.join(chosen)})" if chosen else ""))
        self.every_steps = check_int("every_steps", config["every_steps"], optional=True)
        self.every_tokens = _check_tokens(config["every_tokens"])
        self.full_at = _check_full_at(config["full_at"])

    @property
    def increments(self) -> int:
        """How many increments take ``start`` to ``seq_len`` (the last one may be capped)."""
        return -(-(self.seq_len - self.start) // self.increment)

    def resolve(self, *, total_steps: int | None = None, tokens_per_step: int | None = None) -> MSLG:
        """A copy with the training length and/or tokens per step bound (``None`` keeps the current)."""
        state = self.state_dict()
        state["total_steps"] = self.total_steps if total_steps is None else total_steps
        state["tokens_per_step"] = self.tokens_per_step if tokens_per_step is None else tokens_per_step
        state.pop("type")
        return MSLG(**state)

    @property
    def full_at_step(self) -> int | None:
        """``full_at`` as a step (a fraction is resolved against ``total_steps``)."""
        if self.full_at is None or isinstance(self.full_at, int):
            return self.full_at
        if self.total_steps is None:
            raise ConfigError("total_steps", f"full_at={self.full_at} is a fraction of training: "
                              "pass total_steps= or call schedule.resolve(total_steps=...)")
        return max(1, round(self.full_at * self.total_steps))

    def rate(self) -> Fraction:
        """Increments per step."""
        if self.every_steps is not None:
            return Fraction(1, self.every_steps)
        if self.every_tokens is not None:
            if self.tokens_per_step is None:
                raise ConfigError("tokens_per_step", f"every_tokens={self.every_tokens} needs the tokens per step: "
                                  "pass tokens_per_step= or call schedule.resolve(tokens_per_step=...)")
            return Fraction(self.tokens_per_step) / Fraction(self.every_tokens)
        return Fraction(self.increments, self.full_at_step)

    @property
    def full_step(self) -> int:
        """The first step at which the kept length is ``seq_len``."""
        rate = self.rate()
        return 0 if self.increments == 0 else math.ceil(self.increments / rate)

    def change_points(self, total_steps: int) -> list[tuple[int, int]]:
        """``[(step, kept), ...]`` at step 0 and wherever the kept length changes before
        ``total_steps``: the j-th increment lands at step ceil(j / rate)."""
        total_steps = check_int("total_steps", total_steps)
        rate = self.rate()
        points = [(0, self(0))]
        for increment in range(1, self.increments + 1):
            step = math.ceil(increment / rate)
            if step >= total_steps:
                break
            kept = self(step)
            if kept != points[-1][1]:
                points.append((step, kept))
        return points

    def __call__(self, step: int) -> int:
        grown = self.start + self.increment * math.floor(check_step(step) * self.rate())
        if grown >= self.seq_len:
            return self.seq_len
        if self.multiple_of is not None:
            grown -= grown % self.multiple_of
        return max(self.start, grown)

    def state_dict(self) -> dict:
        return {"type": "MSLG", "seq_len": self.seq_len, "start": self.start, "increment": self.increment,
                "every_steps": self.every_steps, "every_tokens": self.every_tokens, "full_at": self.full_at,
                "multiple_of": self.multiple_of, "tokens_per_step": self.tokens_per_step,
                "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        _check_type(state, "MSLG")
        self._configure({key: value for key, value in state.items() if key != "type"})

    def __repr__(self) -> str:
        settings = {k: v for k, v in self.state_dict().items() if k != "type" and v is not None}
        return "MSLG(" + ", ".join(f"{k}={v!r}" for k, v in settings.items()) + ")"


def _check_tokens(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ConfigError("every_tokens", f"must be a positive number of tokens, got {value!r}")
    return int(value) if value == int(value) else float(value)


def _check_full_at(value: Any) -> int | float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, Real):
        if value is None:
            return None
        raise ConfigError("full_at", f"must be a step (int >= 1) or a fraction in (0, 1], got {value!r}")
    if isinstance(value, int) or (isinstance(value, float) and value > 1 and value == int(value)):
        return check_int("full_at", value)
    if not 0 < value <= 1:
        raise ConfigError("full_at", f"a float is a fraction of training in (0, 1], got {value!r}")
    return float(value)


def _check_type(state: dict, expected: str) -> None:
    if state.get("type") != expected:
        raise ConfigError("state_dict", f"holds a {state.get('type')!r} schedule, not {expected!r}")


class ConstantKeep:
    """A constant kept length (the paper's constant-drop-rate ablation baseline, Section 5.4)."""

    def __init__(self, seq_len: int, keep: int):
        self._configure(seq_len, keep)

    def _configure(self, seq_len: int, keep: int) -> None:
        self.seq_len = check_int("seq_len", seq_len)
        self.keep = check_int("keep", keep)
        if self.keep > self.seq_len:
            raise ConfigError("keep", f"{self.keep} is longer than seq_len={self.seq_len}")

    @property
    def start(self) -> int:
        return self.keep

    @property
    def full_step(self) -> int | None:
        return 0 if self.keep == self.seq_len else None

    def resolve(self, **_: Any) -> ConstantKeep:
        return self

    def __call__(self, step: int) -> int:
        check_step(step)
        return self.keep

    def state_dict(self) -> dict:
        return {"type": "ConstantKeep", "seq_len": self.seq_len, "keep": self.keep}

    def load_state_dict(self, state: dict) -> None:
        _check_type(state, "ConstantKeep")
        self._configure(state["seq_len"], state["keep"])

    def __repr__(self) -> str:
        return f"ConstantKeep(seq_len={self.seq_len}, keep={self.keep})"

