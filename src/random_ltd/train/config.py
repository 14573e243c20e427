"""The typed configuration of a training run, validated at construction.

``None`` means "the task's default" (see ``random_ltd.train.tasks``); ``resolve_config`` fills
those in, and the resolved configuration is what a run folder records and what ``--resume``
compares against.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from random_ltd.errors import ConfigError

TASKS = ("gpt", "bert", "vit", "finetune")
ARMS = ("baseline", "random_ltd")
MODEL_SIZES = ("tiny", "small", "base")
SCHEDULES = ("mslg", "constant")
LR_CLOCKS = ("layer_tokens", "steps")
LR_DECAYS = ("cosine", "linear", "constant")

# Fields that steer how a run is executed or where it writes, not what it computes:
# a resumed run may change them.
RUN_CONTROL_FIELDS = ("out", "device", "progress", "cache_dir", "checkpoint_every", "report_to")
TRACKERS = ("tensorboard", "wandb", "mlflow")


def flag_error(field: str, message: str) -> ConfigError:
    """The ``ConfigError`` for a setting of ``random-ltd train``: its text starts with the flag."""
    return ConfigError(field, message, as_flag=True)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. Budgets, sizes and schedule lengths default per task."""

    task: str = "gpt"
    quick: bool = False
    data: tuple[str, ...] = ()
    corpus_mb: float | None = None
    # budget: give steps or tokens (training tokens of the baseline), not both
    steps: int | None = None
    tokens: int | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    patch_size: int | None = None
    model_size: str | None = None
    layers: int | None = None
    vocab_size: int | None = None
    # random-LTD arm
    drop_layers: str = "1:-1"
    schedule: str = "mslg"
    kept_start: int | None = None
    kept_increment: int | None = None
    kept_every: int | None = None
    full_at: float | None = None
    lr_clock: str = "layer_tokens"
    budget_ratio: float | None = None
    # optimisation
    lr: float | None = None
    lr_decay: str = "cosine"
    warmup: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dropout: float | None = None
    lora: bool = False  # finetune LoRA adapters (PEFT) instead of every weight
    lora_rank: int | None = None
    lora_targets: str | None = None  # comma-separated module names
    # runs
    arms: tuple[str, ...] = ARMS
    seed: int = 0
    seeds: int = 1
    eval_every: int | None = None
    eval_batches: int | None = None
    checkpoint_every: int | None = None
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None: torch's default (--quick: 1)
    out: str | None = None
    cache_dir: str | None = None
    fashion_mnist_dir: str | None = None
    progress: bool = True
    report_to: tuple[str, ...] = ()  # experiment trackers, any of TRACKERS

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _as_tuple(self.data))
        object.__setattr__(self, "arms", _as_tuple(self.arms))
        object.__setattr__(self, "report_to", _as_tuple(self.report_to))
        _check_choice("task", self.task, TASKS)
        _check_choice("model_size", self.model_size, MODEL_SIZES, optional=True)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("lr_clock", self.lr_clock, LR_CLOCKS)
        _check_choice("lr_decay", self.lr_decay, LR_DECAYS)
        self._check_counts()
        self._check_fractions()
        self._check_arms()
        for tracker in self.report_to:
            _check_choice("report_to", tracker, TRACKERS)
        if self.steps is not None and self.tokens is not None:
            raise flag_error("steps", "give a budget in --steps or in --tokens, not both")
        if not isinstance(self.drop_layers, str) or not self.drop_layers.strip():
            raise flag_error("drop_layers",
                             f"must be a slice like '1:-1' or indices like '1,2,3', got {self.drop_layers!r}")

    def _check_counts(self) -> None:
        for name in ("steps", "tokens", "batch_size", "seq_len", "patch_size", "layers", "vocab_size",
                     "kept_start", "kept_increment", "kept_every", "eval_every", "eval_batches",
                     "checkpoint_every", "threads", "lora_rank"):
            _check_int(name, getattr(self, name), minimum=1, optional=True)
        _check_int("seeds", self.seeds, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if self.seq_len is not None and self.seq_len < 2:
            raise flag_error("seq_len", f"must be at least 2, got {self.seq_len}")

    def _check_fractions(self) -> None:
        _check_number("warmup", self.warmup, 0.0, 1.0, open_high=True)
        _check_number("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_number("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_number("grad_clip", self.grad_clip, 0.0, math.inf)
        _check_number("dropout", self.dropout, 0.0, 1.0, optional=True, open_high=True)
        _check_number("corpus_mb", self.corpus_mb, 0.0, math.inf, optional=True, open_low=True)
        _check_number("lr", self.lr, 0.0, math.inf, optional=True, open_low=True)
        _check_number("budget_ratio", self.budget_ratio, 0.0, math.inf, optional=True, open_low=True)
        if self.full_at is not None:
            _check_number("full_at", self.full_at, 0.0, math.inf, open_low=True)
            if self.full_at > 1 and self.full_at != int(self.full_at):
                raise flag_error("full_at", f"is a fraction of training in (0, 1] or a step, got {self.full_at}")
        if self.kept_every is not None and self.full_at is not None:
            raise flag_error("kept_every", "give the interval (--kept-every) or --full-at, not both")

    def _check_arms(self) -> None:
        if not self.arms:
            raise flag_error("arms", f"choose at least one of {', '.join(ARMS)}")
        for arm in self.arms:
            _check_choice("arms", arm, ARMS)
        if len(set(self.arms)) != len(self.arms):
            raise flag_error("arms", f"lists an arm twice: {','.join(self.arms)}")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {field.name: _jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise flag_error(unknown[0], "is not a setting of this version of random-ltd train")
        return cls(**values)

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields (outside ``RUN_CONTROL_FIELDS``) whose values differ: ``{name: (self's, other's)}``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {name: (mine[name], theirs[name]) for name in mine
                if name not in RUN_CONTROL_FIELDS and mine[name] != theirs[name]}


def _as_tuple(value: Any) -> tuple:
    if isinstance(value, str):
        return tuple(part for part in value.split(",") if part)
    return tuple(value)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check_choice(name: str, value: Any, choices: tuple[str, ...], optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in choices:
        raise flag_error(name, f"unknown value {value!r}; choose one of {', '.join(choices)}")


def _check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise flag_error(name, f"must be an integer, got {value!r}")
    if value < minimum:
        raise flag_error(name, f"must be at least {minimum}, got {value}")


def _check_number(name: str, value: Any, low: float, high: float, optional: bool = False,
                  open_low: bool = False, open_high: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise flag_error(name, f"must be a finite number, got {value!r}")
    if value < low or value > high or (open_low and value == low) or (open_high and value == high):
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise flag_error(name, f"must lie in {interval}, got {value}")
