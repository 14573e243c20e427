"""A training run's numbers, in one place: the schedule bound to the run, the kept length of each
step, the layer-tokens of a step and of the steps before it, the LayerToken LR budget.

    run = Run.build(schedule, batch_size=256, num_layers=24, drop_layers=[1, ..., 22], total_steps=10_000)
    run.kept(step), run.keep(step), run.layer_tokens(run.kept(step)), run.layer_tokens_before(step)

The ``Driver`` and every integration ask this object instead of computing these themselves.
Pure arithmetic: no torch, no model.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from random_ltd.accounting import count_drop_layers, layer_tokens_per_step, total_layer_tokens
from random_ltd.deepspeed_config import DeepSpeedLinear
from random_ltd.errors import ConfigError
from random_ltd.schedules import MSLG, ConstantKeep, KeptLengthSchedule, check_int, check_step

SCHEDULE_TYPES = {cls.__name__: cls for cls in (MSLG, ConstantKeep, DeepSpeedLinear)}


def check_schedule(schedule: Any) -> KeptLengthSchedule:
    """A kept-length schedule, or one rebuilt from its ``state_dict()`` (as saved in checkpoints)."""
    if isinstance(schedule, Mapping):
        kind = schedule.get("type")
        if kind not in SCHEDULE_TYPES:
            raise ConfigError("schedule", f"a saved schedule of type {kind!r} cannot be rebuilt; "
                                          f"known: {sorted(SCHEDULE_TYPES)}")
        return SCHEDULE_TYPES[kind](**{key: value for key, value in schedule.items() if key != "type"})
    if not callable(schedule) or not isinstance(getattr(schedule, "seq_len", None), int):
        raise ConfigError("schedule", "must be a kept-length schedule (callable step -> kept, with seq_len), "
                          f"e.g. random_ltd.MSLG(...); got {schedule!r}")
    return schedule


def resolve_schedule(schedule: KeptLengthSchedule, *, tokens_per_step: int,
                     total_steps: int | None = None) -> KeptLengthSchedule:
    """The schedule with what it leaves to the run filled in: the tokens per step (``every_tokens``)
    and the run's length (a fractional ``full_at``). What the schedule already has wins."""
    if not hasattr(schedule, "resolve"):
        return schedule
    missing_steps = getattr(schedule, "total_steps", 0) is None
    missing_tokens = getattr(schedule, "tokens_per_step", 0) is None
    return schedule.resolve(total_steps=total_steps if missing_steps else None,
                            tokens_per_step=tokens_per_step if missing_tokens else None)


@dataclasses.dataclass(frozen=True)
class Run:
    """The numbers of one training run that random-LTD's counters derive from (see the module docstring).

    ``batch_size``: sequences per optimizer step over all ranks. ``schedule``: bound to the run
    (``Run.build`` resolves it); ``None``: nothing is dropped (a baseline arm). ``drop_layers``
    are the dropping layers' indices. ``total_steps``: the run's length, when known.

    A kept length is an int: ``seq_len`` means nothing is dropped. ``keep(step)`` is the same
    number as the handle takes it (``handle.set_keep``: ``None`` there means "do not drop").
    """

    seq_len: int
    batch_size: int
    num_layers: int
    drop_layers: tuple[int, ...]
    schedule: KeptLengthSchedule | None = None
    total_steps: int | None = None

    @classmethod
    def build(cls, schedule: KeptLengthSchedule | None, *, batch_size: int, num_layers: int, drop_layers: Any,
              seq_len: int | None = None, total_steps: int | None = None) -> Run:
        """Validate the numbers and bind the schedule to them; ``seq_len`` defaults to the schedule's."""
        if seq_len is None and schedule is None:
            raise ConfigError("seq_len", "is needed when there is no schedule")
        seq_len = check_int("seq_len", schedule.seq_len if seq_len is None else seq_len)
        batch_size = check_int("batch_size", batch_size)
        total_steps = check_int("total_steps", total_steps, minimum=0, optional=True)
        count_drop_layers(num_layers, list(drop_layers))  # validates
        if schedule is not None:
            if schedule.seq_len != seq_len:
                raise ConfigError("schedule", f"grows to seq_len={schedule.seq_len} but the run's seq_len is {seq_len}")
            schedule = resolve_schedule(schedule, tokens_per_step=batch_size * seq_len, total_steps=total_steps or None)
            schedule(0)  # a schedule that still misses a number says which, now
        return cls(seq_len, batch_size, num_layers, tuple(drop_layers), schedule, total_steps)

    @property
    def dropping(self) -> bool:
        return self.schedule is not None

    def kept(self, step: int) -> int:
        """The kept length of ``step`` (``seq_len`` when nothing is dropped)."""
        return self.schedule(check_step(step)) if self.dropping else self.seq_len

    def keep(self, step: int) -> int | None:
        """``kept(step)`` as ``handle.set_keep`` takes it: ``None`` (do not drop) at full length."""
        kept = self.kept(step)
        return None if kept >= self.seq_len else kept

    def layer_tokens(self, kept: int, batch_size: int | None = None) -> int:
        """Layer-tokens of one step at kept length ``kept`` (``batch_size``: a short batch's sequences)."""
        batch_size = self.batch_size if batch_size is None else batch_size
        return layer_tokens_per_step(self.seq_len, batch_size, self.num_layers, list(self.drop_layers), kept)

    def layer_tokens_before(self, step: int) -> int:
        """Layer-tokens of steps 0 .. step - 1 (closed form per constant-length segment)."""
        if check_step(step) == 0:
            return 0
        if not self.dropping:
            return step * self.layer_tokens(self.seq_len)
        return total_layer_tokens(self.schedule, step, batch_size=self.batch_size, num_layers=self.num_layers,
                                  drop_layers=list(self.drop_layers))

    def lr_settings(self, given: Mapping | bool = True, *, warmup_steps: int = 0,
                    decay: str | None = None) -> dict[str, Any]:
        """``LayerTokenLR`` settings: ``given`` (a dict, or ``True`` for none), the rest from the run:
        decay over the run's layer-tokens, warmup over those of its first ``warmup_steps`` steps."""
        settings = dict(given) if isinstance(given, Mapping) else {}
        if "total_layer_tokens" not in settings:
            if not self.total_steps:
                raise ConfigError("layer_token_lr", "the LayerToken LR needs the run's length (max_steps) "
                                  "or a total_layer_tokens setting")
            settings["total_layer_tokens"] = self.layer_tokens_before(self.total_steps)
        settings.setdefault("warmup_layer_tokens", self.layer_tokens_before(warmup_steps))
        if decay is not None:
            settings.setdefault("decay", decay)
        return settings
