"""Plans: what a schedule costs over a training run, in layer-tokens and FLOPs (pure computation).

    training = random_ltd.Training(seq_len=2048, num_layers=24, batch_size=256, total_tokens=300e9)
    plan = random_ltd.build_plan(random_ltd.MSLG(2048, 128, 16, every_tokens=1.75e9), training)
    plan.layer_token_saving, plan.flop_saving, plan.to_json()

``solve_for_saving`` is the inverse: the start length or the interval that reaches a target saving.
``build_mod_plan(capacity, training)`` plans Mixture-of-Depths: the routed layers run a constant
number of tokens, plus a router each.
"""
from __future__ import annotations

import bisect
import dataclasses
import math

from random_ltd.accounting import (
    capacity_length,
    check_capacity,
    flops_per_step,
    kept_segments,
    layer_tokens_per_step,
    mod_flops_per_step,
    mod_layer_tokens_per_step,
)
from random_ltd.errors import ConfigError, RandomLTDError
from random_ltd.layer_selection import parse_layer_selection
from random_ltd.lr import lr_factor
from random_ltd.schedules import MSLG, ConstantKeep, KeptLengthSchedule, check_int
from random_ltd.search import first_true

DEFAULT_FULL_AT = 0.7  # the paper's GPT setting: full length after 210B of 300B tokens
METHODS = ("random_ltd", "mod")  # random-LTD's kept-length schedules; Mixture-of-Depths' routers at a capacity


@dataclasses.dataclass(frozen=True)
class FlopModel:
    """Model sizes for the FLOP estimate (``ffn_dim`` defaults to 4 x ``d_model``; vocab 0: no output layer)."""

    d_model: int = 1024
    ffn_dim: int | None = None
    vocab_size: int = 0

    def __post_init__(self):
        check_int("d_model", self.d_model)
        check_int("ffn_dim", self.ffn_dim, optional=True)
        check_int("vocab_size", self.vocab_size, minimum=0)

    @property
    def ffn(self) -> int:
        return 4 * self.d_model if self.ffn_dim is None else self.ffn_dim


@dataclasses.dataclass(frozen=True)
class Training:
    """The run a schedule is planned for: give ``total_steps`` or ``total_tokens`` (then the step
    count is ceil(total_tokens / (batch_size * seq_len)), so at least that many tokens are seen)."""

    seq_len: int
    num_layers: int
    batch_size: int
    total_steps: int | None = None
    total_tokens: float | None = None
    drop_layers: str | tuple[int, ...] | list[int] = "1:-1"
    flop_model: FlopModel = FlopModel()

    def __post_init__(self):
        for name in ("seq_len", "num_layers", "batch_size"):
            check_int(name, getattr(self, name))
        if (self.total_steps is None) == (self.total_tokens is None):
            raise ConfigError("total_steps", "give exactly one of total_steps, total_tokens")
        check_int("total_steps", self.total_steps, optional=True)
        if self.total_tokens is not None and not (isinstance(self.total_tokens, (int, float))
                                                  and self.total_tokens > 0):
            raise ConfigError("total_tokens", f"must be a positive number, got {self.total_tokens!r}")
        _ = self.drop_layer_ids  # validates the selection

    @property
    def total_field(self) -> str:
        return "total_steps" if self.total_steps is not None else "total_tokens"

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def steps(self) -> int:
        if self.total_steps is not None:
            return self.total_steps
        return math.ceil(self.total_tokens / self.tokens_per_step)

    @property
    def drop_layer_ids(self) -> list[int]:
        try:
            return parse_layer_selection(self.drop_layers, self.num_layers)
        except RandomLTDError as error:
            raise ConfigError("drop_layers", str(error)) from None


@dataclasses.dataclass(frozen=True)
class Plan:
    """A schedule over a training run, with its layer-token and FLOP totals (built by ``build_plan``,
    or by ``build_mod_plan`` for Mixture-of-Depths: ``method`` "mod", its ``capacity``, a constant
    schedule at the routed length, FLOPs with the routers)."""

    schedule: KeptLengthSchedule
    training: Training
    segments: list[tuple[int, int, int]]  # (first step, kept, number of steps)
    baseline_layer_tokens: int
    layer_tokens: int  # the method's total
    baseline_flops: int
    flops: int  # the method's total
    method: str = "random_ltd"
    capacity: float | int | None = None  # Mixture-of-Depths only

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError("method", f"one of {', '.join(METHODS)}, got {self.method!r}")
        if (self.capacity is None) != (self.method != "mod"):
            raise ConfigError("mod_capacity", "a Mixture-of-Depths plan has a capacity, a random-LTD plan none")

    seq_len = property(lambda self: self.training.seq_len)
    num_layers = property(lambda self: self.training.num_layers)
    batch_size = property(lambda self: self.training.batch_size)
    total_steps = property(lambda self: self.training.steps)
    tokens_per_step = property(lambda self: self.training.tokens_per_step)
    drop_layers = property(lambda self: self.training.drop_layer_ids)

    @property
    def random_ltd_layer_tokens(self) -> int:
        """``layer_tokens`` under random-LTD's name (a random-LTD plan's only)."""
        return self._random_ltd_total(self.layer_tokens)

    @property
    def random_ltd_flops(self) -> int:
        """``flops`` under random-LTD's name (a random-LTD plan's only)."""
        return self._random_ltd_total(self.flops)

    def _random_ltd_total(self, total: int) -> int:
        if self.method != "random_ltd":
            raise RandomLTDError(f"a {self.method} plan has no random-LTD totals: read plan.layer_tokens, plan.flops")
        return total

    @property
    def routed_length(self) -> int | None:
        """Tokens a Mixture-of-Depths routed layer runs of each sequence (``None`` for random-LTD)."""
        return None if self.capacity is None else capacity_length(self.capacity, self.seq_len)

    @property
    def layer_token_saving(self) -> float:
        return 1.0 - self.layer_tokens / self.baseline_layer_tokens

    @property
    def flop_saving(self) -> float:
        return 1.0 - self.flops / self.baseline_flops

    @property
    def change_points(self) -> list[tuple[int, int]]:
        return [(step, kept) for step, kept, _ in self.segments]

    @property
    def full_length_step(self) -> int | None:
        """The first step trained at full length, ``None`` if training ends before it."""
        return next((step for step, kept, _ in self.segments if kept >= self.seq_len), None)

    def layer_tokens_before(self, step: int) -> int:
        """Layer-tokens consumed by steps 0 .. step - 1 (the LayerToken LR clock at ``step``)."""
        starts = [first for first, _, _ in self.segments]
        consumed = 0
        for first, kept, count in self.segments[: bisect.bisect_right(starts, step)]:
            consumed += min(count, step - first) * self._layer_tokens(kept)
        return consumed

    def _layer_tokens(self, kept: int) -> int:
        return layer_tokens_per_step(self.seq_len, self.batch_size, self.num_layers, self.drop_layers, kept)

    def to_json(self) -> dict:
        """The plan as one JSON object; the method's totals are named for it (``random_ltd_flops``, ``mod_flops``)."""
        model = self.training.flop_model
        routing = {"mod_capacity": self.capacity, "routed_length": self.routed_length} if self.method == "mod" else {}
        return {
            "method": self.method, **routing,
            "seq_len": self.seq_len, "num_layers": self.num_layers, "drop_layers": self.drop_layers,
            "batch_size": self.batch_size, "tokens_per_step": self.tokens_per_step,
            "total_steps": self.total_steps, "total_tokens": self.total_steps * self.tokens_per_step,
            "schedule_config": self.schedule.state_dict(),
            "schedule": [{"step": step, "kept": kept} for step, kept in self.change_points],
            "full_length_step": self.full_length_step,
            "baseline_layer_tokens": self.baseline_layer_tokens,
            f"{self.method}_layer_tokens": self.layer_tokens,
            "layer_token_saving": self.layer_token_saving,
            "baseline_flops": self.baseline_flops, f"{self.method}_flops": self.flops,
            "flop_saving": self.flop_saving,
            "flop_model": {"d_model": model.d_model, "ffn_dim": model.ffn, "vocab_size": model.vocab_size},
        }


def build_plan(schedule: KeptLengthSchedule, training: Training, *, require_full: bool = True) -> Plan:
    """Cost of ``schedule`` over ``training``. With ``require_full`` a schedule that reaches full
    length only after training ends is an error (``ConfigError`` naming the total or ``full_at``)."""
    if schedule.seq_len != training.seq_len:
        raise ConfigError("seq_len", f"the schedule grows to {schedule.seq_len}, the training uses {training.seq_len}")
    if hasattr(schedule, "resolve"):
        schedule = schedule.resolve(total_steps=training.steps, tokens_per_step=training.tokens_per_step)
    full = getattr(schedule, "full_step", None)
    if require_full and full is not None and full > training.steps:
        field = "full_at" if getattr(schedule, "full_at", None) is not None else training.total_field
        raise ConfigError(field, f"training ends after {training.steps} steps, before the kept length reaches "
                          f"{schedule.seq_len} at step {full}")
    segments = kept_segments(schedule, training.steps)
    layer_tokens = _sum_over(segments, lambda kept: _step_layer_tokens(training, kept))
    flops = _sum_over(segments, lambda kept: _step_flops(training, kept))
    return Plan(schedule, training, segments, baseline_layer_tokens=training.steps * _step_layer_tokens(training, None),
                layer_tokens=layer_tokens, baseline_flops=training.steps * _step_flops(training, None), flops=flops)


def build_mod_plan(capacity: float | int, training: Training) -> Plan:
    """Cost of Mixture-of-Depths over ``training``: every step, each routed layer (``training.drop_layers``)
    runs the top ``capacity_length(capacity, seq_len)`` tokens of each sequence, plus its router.

    ``capacity``: a fraction in (0, 1] or an int count >= 2 (else a ``ConfigError`` naming
    ``mod_capacity``). The plan's schedule is that constant routed length; its FLOPs are
    ``mod_flops_per_step``'s (routers included), so at capacity 1.0 it saves no layer-tokens and
    costs the routers' FLOPs more than the baseline."""
    capacity = check_capacity(capacity)
    model, steps = training.flop_model, training.steps
    shape = (training.seq_len, training.batch_size, training.num_layers)
    schedule = ConstantKeep(training.seq_len, capacity_length(capacity, training.seq_len))
    layer_tokens = mod_layer_tokens_per_step(*shape, training.drop_layer_ids, capacity)
    flops = mod_flops_per_step(*shape, model.d_model, routed_layers=training.drop_layer_ids, capacity=capacity,
                               ffn_dim=model.ffn, vocab_size=model.vocab_size)
    return Plan(schedule, training, kept_segments(schedule, steps),
                baseline_layer_tokens=steps * _step_layer_tokens(training, None), layer_tokens=steps * layer_tokens,
                baseline_flops=steps * _step_flops(training, None), flops=steps * flops, method="mod",
                capacity=capacity)


def _sum_over(segments: list[tuple[int, int, int]], per_step) -> int:
    return sum(count * per_step(kept) for _, kept, count in segments)


def _step_layer_tokens(training: Training, kept: int | None) -> int:
    return layer_tokens_per_step(training.seq_len, training.batch_size, training.num_layers,
                                 training.drop_layer_ids, kept)


def _step_flops(training: Training, kept: int | None) -> int:
    model = training.flop_model
    return flops_per_step(training.seq_len, training.batch_size, training.num_layers, model.d_model, kept=kept,
                          drop_layers=training.drop_layer_ids, ffn_dim=model.ffn, vocab_size=model.vocab_size)


def solve_for_saving(target: float, training: Training, *, increment: int, start: int | None = None,
                     full_at: int | float | None = None, multiple_of: int | None = None) -> Plan:
    """The MSLG plan whose LayerToken saving is the smallest one >= ``target``.

    With ``start`` given, solve for the interval (``every_steps``: the saving grows with it; the
    kept length must reach full length by the end of training). Otherwise solve for the start
    length, the largest one that reaches ``target`` when the kept length reaches full length at
    ``full_at`` (default 0.7 of training, as in the paper's GPT setting).
    """
    if not (isinstance(target, (int, float)) and 0 < target < 1):
        raise ConfigError("target_saving", f"must be a fraction in (0, 1), got {target!r}")
    if start is not None and full_at is not None:
        raise ConfigError("target_saving",
                          "give start (to solve the interval) or full_at (to solve the start), not both")
    if start is not None:
        return _solve_interval(target, training, start, increment, multiple_of)
    return _solve_start(target, training, increment, DEFAULT_FULL_AT if full_at is None else full_at, multiple_of)


def _solve_interval(target: float, training: Training, start: int, increment: int, multiple_of: int | None) -> Plan:
    probe = MSLG(training.seq_len, start, increment, every_steps=1, multiple_of=multiple_of)
    longest = training.steps // max(1, probe.increments)
    if probe.increments == 0 or longest < 1:
        raise ConfigError("target_saving", f"start={start} leaves no room to grow within {training.steps} steps")

    def plan_for(every: int) -> Plan:
        return build_plan(MSLG(training.seq_len, start, increment, every_steps=every, multiple_of=multiple_of),
                          training)

    def reaches(every: int) -> bool:
        return plan_for(every).layer_token_saving >= target

    if not reaches(longest):
        raise ConfigError("target_saving", f"{target} is out of reach from start={start}: at most "
                          f"{plan_for(longest).layer_token_saving:.4f} with full length at the end of training")
    return plan_for(first_true(reaches, 1, longest))


def _solve_start(target: float, training: Training, increment: int, full_at: int | float,
                 multiple_of: int | None) -> Plan:
    unit = multiple_of or 1
    candidates = list(range(unit, training.seq_len, unit))

    def plan_for(start: int) -> Plan:
        return build_plan(MSLG(training.seq_len, start, increment, full_at=full_at, multiple_of=multiple_of), training)

    def falls_short(index: int) -> bool:
        return plan_for(candidates[index]).layer_token_saving < target

    # the saving falls as the start grows: find the last start that still reaches the target
    last = len(candidates) - 1
    if candidates and falls_short(last):
        last = first_true(falls_short, 0, last) - 1
    if not candidates or last < 0:
        best = plan_for(candidates[0]).layer_token_saving if candidates else 0.0
        raise ConfigError("target_saving", f"{target} is out of reach with full length at full_at={full_at}: "
                          f"at most {best:.4f}")
    return plan_for(candidates[last])


def lr_curves(plan: Plan, *, points: int = 400, warmup_fraction: float = 0.0, decay: str = "cosine",
              min_lr_ratio: float = 0.0) -> dict[str, list]:
    """Sampled steps with their kept length, the LayerToken LR factor and the iteration-based LR
    factor (same warmup fraction and decay), e.g. to plot what the LayerToken LR changes."""
    steps = sorted({round(i * (plan.total_steps - 1) / max(1, points - 1)) for i in range(points)})
    budget = plan.layer_tokens
    warmup_layer_tokens = round(warmup_fraction * plan.total_steps * plan.tokens_per_step * plan.num_layers)
    warmup_steps = round(warmup_fraction * plan.total_steps)
    return {
        "step": steps,
        "kept": [plan.schedule(step) for step in steps],
        "layer_token_lr": [lr_factor(plan.layer_tokens_before(step), budget, min(warmup_layer_tokens, budget),
                                     decay, min_lr_ratio) for step in steps],
        "iteration_lr": [lr_factor(step, plan.total_steps, warmup_steps, decay, min_lr_ratio) for step in steps],
    }
