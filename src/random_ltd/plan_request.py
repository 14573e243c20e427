"""What a plan is asked for, checked as a whole: which settings go together, which are required,
what a DeepSpeed config fixes. ``random-ltd plan`` fills a ``PlanRequest`` from its flags and
prints the ``Plan`` it makes; every error is a ``ConfigError`` naming the setting (the command
line names its flag)."""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from random_ltd.accounting import check_capacity
from random_ltd.deepspeed_config import from_deepspeed_config
from random_ltd.errors import ConfigError
from random_ltd.lr import DECAYS
from random_ltd.planner import FlopModel, Plan, Training, build_mod_plan, build_plan, lr_curves, solve_for_saving
from random_ltd.schedules import MSLG, ConstantKeep

# What a DeepSpeed config sets, so a request that reads one may not set it too.
DEEPSPEED_SETS = ("start", "every_steps", "every_tokens", "full_at", "keep", "multiple_of", "target_saving",
                  "drop_layers")
SOLVED_FOR = ("every_steps", "every_tokens", "keep")  # what target_saving solves for
# Mixture-of-Depths routes at a constant capacity: no kept-length schedule, no DeepSpeed config.
NOT_WITH_MOD = ("start", "every_steps", "every_tokens", "full_at", "keep", "multiple_of", "target_saving",
                "deepspeed_config")


@dataclasses.dataclass(frozen=True)
class LRCurves:
    """How a plan's learning-rate curves are drawn: warmup (fraction of training), decay, floor."""

    warmup_fraction: float = 0.0
    decay: str = "cosine"
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError("warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if self.decay not in DECAYS:
            raise ConfigError("decay", f"choose one of {', '.join(DECAYS)}, got {self.decay!r}")

    def of(self, plan: Plan) -> dict[str, list]:
        return lr_curves(plan, warmup_fraction=self.warmup_fraction, decay=self.decay, min_lr_ratio=self.min_lr_ratio)


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    """A run and a schedule to plan. Either the model and run (``seq_len``, ``num_layers``,
    ``batch_size``, ``total_steps`` or ``total_tokens``) and a schedule (MSLG from ``start``
    growing by ``increment`` ``every_steps`` / ``every_tokens`` / to ``full_at``, a constant
    ``keep``, or ``target_saving`` to solve for), or a ``deepspeed_config`` that sets the schedule
    and the layers (the run's length, and the batch if the file lacks it, still given here).
    ``mod_capacity`` plans Mixture-of-Depths instead: the ``drop_layers`` are routed at that
    capacity (a fraction in (0, 1] or an int count >= 2), with no schedule setting.

    Checked on construction, in the order the settings are read; ``plan()`` reads the DeepSpeed
    config and builds (or solves for) the plan.
    """

    seq_len: int | None = None
    num_layers: int | None = None
    drop_layers: str | None = None
    batch_size: int | None = None
    total_steps: int | None = None
    total_tokens: float | None = None
    deepspeed_config: str | None = None
    start: int | None = None
    increment: int = 16
    every_steps: int | None = None
    every_tokens: float | None = None
    full_at: int | float | None = None
    keep: int | None = None
    multiple_of: int | None = None
    target_saving: float | None = None
    mod_capacity: float | int | None = None
    d_model: int = 1024
    ffn_dim: int | None = None
    vocab_size: int = 0
    training: Training | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    schedule: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        with self._naming_the_total():
            if self.mod_capacity is not None:
                check_capacity(self.mod_capacity)
                self._refuse(NOT_WITH_MOD, "not allowed with --mod-capacity (Mixture-of-Depths routes at a constant "
                                           "capacity, with no kept-length schedule)")
            if self.deepspeed_config is not None:
                self._refuse(DEEPSPEED_SETS,
                             "not allowed with --deepspeed-config (the file sets the schedule and layers)")
                return
            for name in ("seq_len", "num_layers"):
                if getattr(self, name) is None:
                    raise ConfigError(name, "required (or give --deepspeed-config)")
            object.__setattr__(self, "training", self._training(self.seq_len, self.num_layers,
                                                                self.drop_layers or "1:-1", self.batch_size))
            if self.target_saving is not None:
                self._refuse(SOLVED_FOR, "not allowed with --target-saving (it solves for the schedule)")
            elif self.mod_capacity is None:
                object.__setattr__(self, "schedule", self._schedule())

    def plan(self, on_warning: Callable[[str], None] = warnings.warn) -> Plan:
        """The plan; ``on_warning`` gets what reading a DeepSpeed config warns about."""
        with self._naming_the_total():
            if self.deepspeed_config is not None:
                return self._deepspeed_plan(on_warning)
            if self.mod_capacity is not None:
                return build_mod_plan(self.mod_capacity, self.training)
            if self.target_saving is not None:
                return solve_for_saving(self.target_saving, self.training, increment=self.increment, start=self.start,
                                        full_at=self.full_at, multiple_of=self.multiple_of)
            return build_plan(self.schedule, self.training)

    def _refuse(self, names: tuple[str, ...], reason: str) -> None:
        for name in names:
            if getattr(self, name) is not None:
                raise ConfigError(name, reason)

    def _training(self, seq_len: int, num_layers: int, drop_layers: Any, batch_size: int | None) -> Training:
        if batch_size is None:
            raise ConfigError("batch_size", "required: sequences per optimizer step")
        if self.total_steps is None and self.total_tokens is None:
            raise ConfigError("total_steps", "give the training length: --total-steps or --total-tokens")
        flop_model = FlopModel(d_model=self.d_model, ffn_dim=self.ffn_dim, vocab_size=self.vocab_size)
        return Training(seq_len=seq_len, num_layers=num_layers, batch_size=batch_size, total_steps=self.total_steps,
                        total_tokens=self.total_tokens, drop_layers=drop_layers, flop_model=flop_model)

    def _schedule(self) -> Any:
        if self.keep is not None:
            self._refuse(("start", "multiple_of", "every_steps", "every_tokens", "full_at"),
                         "not allowed with --keep (a constant kept length)")
            return ConstantKeep(self.seq_len, self.keep)
        if self.start is None:
            raise ConfigError("start", "required: the kept length at step 0 (or give --keep or --target-saving)")
        if self.every_steps is None and self.every_tokens is None and self.full_at is None:
            raise ConfigError("every_steps",
                              "give when the kept length grows: --every-steps, --every-tokens or --full-at")
        return MSLG(self.seq_len, self.start, self.increment, every_steps=self.every_steps,
                    every_tokens=self.every_tokens, full_at=self.full_at, multiple_of=self.multiple_of)

    def _deepspeed_plan(self, on_warning: Callable[[str], None]) -> Plan:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                imported = from_deepspeed_config(self.deepspeed_config)
        except ConfigError as error:
            inner = error.message if error.field == "deepspeed_config" else str(error)
            raise ConfigError("deepspeed_config", inner) from None
        for warning in caught:
            on_warning(str(warning.message))
        for name, value in (("seq_len", imported.seq_len), ("num_layers", imported.num_layers)):
            given = getattr(self, name)
            if given is not None and given != value:
                raise ConfigError(name, f"{given} contradicts the DeepSpeed config ({value})")
        batch_size = self.batch_size if self.batch_size is not None else imported.batch_size
        training = self._training(imported.seq_len, imported.num_layers, imported.layer_ids, batch_size)
        return build_plan(imported.schedule, training)

    @contextlib.contextmanager
    def _naming_the_total(self) -> Iterator[None]:
        """A run given in tokens has its step count computed: errors about it name the tokens."""
        try:
            yield
        except ConfigError as error:
            if error.field == "total_steps" and self.total_tokens is not None:
                raise ConfigError("total_tokens", error.message) from None
            raise
