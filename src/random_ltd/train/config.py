"""The typed configuration of a training run and every rule it must follow.

``TrainConfig`` checks each field on its own at construction. ``resolve`` fills every ``None``
with the task's default and applies the rules that tie fields together (budgets, kept lengths,
the schedule, the task's limits); the resolved configuration is what a run folder records and
what ``--resume`` compares against. What only the data or the installed packages can tell
(corpus size, model files) the task checks when it loads them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from random_ltd.errors import ConfigError
from random_ltd.schedules import MSLG, ConstantKeep

TASKS = ("gpt", "bert", "vit", "finetune", "dit")
ARMS = ("baseline", "random_ltd")
# opt-in arms (--arms): "tread" routes one kept half through the span of --drop-layers (train/tread.py);
# "mod" routes the --drop-layers with Mixture-of-Depths at --mod-capacity (train/mod_arm.py)
KNOWN_ARMS = ARMS + ("tread", "mod")
MODEL_SIZES = ("tiny", "small", "base")
SCHEDULES = ("mslg", "constant")
LR_CLOCKS = ("layer_tokens", "steps")
LR_DECAYS = ("cosine", "linear", "constant")

# Fields that steer how a run is executed or where it writes, not what it computes:
# a resumed run may change them.
RUN_CONTROL_FIELDS = ("out", "device", "progress", "cache_dir", "checkpoint_every", "report_to", "arm_order")
# How the arms of one seed take turns: "lockstep" (one step of each per round, in a shuffled
# order), "sequential" (one arm after the other), "auto" (lockstep where the arms fit in memory).
ARM_ORDERS = ("auto", "lockstep", "sequential")
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
    # mod arm: the fraction of each sequence a routed layer runs (0.5: the layer-tokens of a constant
    # random-LTD half), and the weight of the routers' prediction loss added to the training loss
    mod_capacity: float = 0.5
    mod_aux_coef: float = 0.01
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
    arm_order: str = "auto"
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
        _check_choice("arm_order", self.arm_order, ARM_ORDERS)
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
        _check_number("mod_capacity", self.mod_capacity, 0.0, 1.0, open_low=True)
        _check_number("mod_aux_coef", self.mod_aux_coef, 0.0, math.inf)
        if self.full_at is not None:
            _check_number("full_at", self.full_at, 0.0, math.inf, open_low=True)
            if self.full_at > 1 and self.full_at != int(self.full_at):
                raise flag_error("full_at", f"is a fraction of training in (0, 1] or a step, got {self.full_at}")
        if self.kept_every is not None and self.full_at is not None:
            raise flag_error("kept_every", "give the interval (--kept-every) or --full-at, not both")

    def _check_arms(self) -> None:
        if not self.arms:
            raise flag_error("arms", f"choose at least one of {', '.join(KNOWN_ARMS)}")
        for arm in self.arms:
            _check_choice("arms", arm, KNOWN_ARMS)
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


# --- the task defaults and the rules between fields -------------------------------------------

# The text tasks' sizes (gpt and bert); the other tasks' below. Full runs were sized so that both
# arms of the default run finish in minutes on a laptop CPU (docs/training.md).
_TEXT = {False: dict(steps=300, batch_size=16, seq_len=128, model_size="small", vocab_size=4096, lr=1e-3,
                     dropout=0.0, full_at=0.7, eval_batches=8),
         True: dict(steps=24, batch_size=8, seq_len=64, model_size="tiny", vocab_size=512, corpus_mb=1.0, lr=2e-3,
                    dropout=0.0, full_at=0.7, eval_batches=2)}
TASK_DEFAULTS: dict[str, dict[bool, dict[str, Any]]] = {
    "gpt": _TEXT,
    "bert": _TEXT,
    "vit": {False: dict(steps=200, batch_size=32, patch_size=2, model_size="small", lr=1e-3, dropout=0.0,
                        full_at=0.8, eval_batches=16),
            True: dict(steps=24, batch_size=16, patch_size=7, model_size="tiny", lr=2e-3, dropout=0.0, full_at=0.8,
                       eval_batches=4)},
    # --quick keeps the first 4 of SmolLM2's 30 pretrained layers: the same pipeline, a fifth of the work
    "finetune": {False: dict(steps=60, batch_size=4, seq_len=256, corpus_mb=4.0, lr=1e-4, full_at=0.7,
                             eval_batches=4),
                 True: dict(steps=4, batch_size=2, seq_len=32, layers=4, corpus_mb=0.3, lr=1e-4, full_at=0.75,
                            eval_batches=1)},
    # dit: 196 image tokens (patch 2); --quick: 49 (patch 4)
    "dit": {False: dict(steps=100, batch_size=16, patch_size=2, model_size="small", lr=1e-3, dropout=0.0,
                        full_at=0.8, eval_batches=2),
            True: dict(steps=60, batch_size=16, patch_size=4, model_size="tiny", lr=2e-3, dropout=0.0, full_at=0.8,
                       eval_batches=2)},
}
# The first kept length as a fraction of the sequence (the paper: GPT 128/2048, BERT 128/512, ViT
# 66/197); the default increment is 1/32 of the sequence.
START_FRACTION = {"gpt": 1 / 8, "bert": 1 / 4, "vit": 1 / 3, "finetune": 1 / 4, "dit": 1 / 2}
# Each text task's model and its position embeddings: the longest sequence it takes.
MAX_POSITIONS = {"gpt": ("GPT-2", 1024), "bert": ("BERT", 512), "finetune": ("SmolLM2-135M", 8192)}
NOT_FOR_TASK = {"vit": ("vocab_size", "corpus_mb"), "dit": ("vocab_size", "corpus_mb"),
                "finetune": ("model_size", "vocab_size")}
IMAGE_SIZE = 28  # Fashion-MNIST's images are 28 x 28
_SCHEDULE_FIELDS = {"start": "kept_start", "increment": "kept_increment", "every_steps": "kept_every",
                    "full_at": "full_at", "keep": "kept_start"}


def resolve(config: TrainConfig) -> TrainConfig:
    """``config`` with every ``None`` that has a task default filled in, checked as a whole.

    Idempotent: a resolved configuration resolves to itself."""
    defaults = dict(TASK_DEFAULTS[config.task][config.quick])
    if config.kept_every is not None:
        defaults.pop("full_at", None)  # an explicit interval replaces the default full-at point
    if config.tokens is not None:
        defaults.pop("steps")  # the budget is given in tokens
    resolved = config.replace(**{name: value for name, value in defaults.items() if getattr(config, name) is None})
    _check_task_fields(resolved)
    if resolved.task in ("vit", "dit"):
        resolved = resolved.replace(seq_len=_vit_length(resolved))
    _check_positions(resolved)
    start = resolved.kept_start or max(1, math.ceil(START_FRACTION[resolved.task] * resolved.seq_len))
    increment = resolved.kept_increment or max(1, resolved.seq_len // 32)
    resolved = resolved.replace(kept_start=start, kept_increment=increment)
    if resolved.kept_start > resolved.seq_len:
        raise flag_error("kept_start", f"{resolved.kept_start} is longer than the sequence ({resolved.seq_len} tokens)")
    if resolved.eval_every is None:
        resolved = resolved.replace(eval_every=max(1, budget_steps(resolved) // 10))
    if resolved.checkpoint_every is None:
        resolved = resolved.replace(checkpoint_every=resolved.eval_every)
    if resolved.quick and resolved.threads is None:
        # tiny models gain nothing from threads, and on a shared machine threads wait on each other
        resolved = resolved.replace(threads=1)
    make_schedule(resolved, resolved.seq_len, budget_steps(resolved))  # raises for a schedule that cannot be
    return resolved


def budget_steps(config: TrainConfig) -> int:
    """The baseline's number of steps: ``--steps``, or ``--tokens`` rounded up to whole steps."""
    if config.tokens is not None:
        return -(-config.tokens // (config.batch_size * config.seq_len))
    return config.steps


def make_schedule(config: TrainConfig, seq_len: int, steps: int) -> MSLG | ConstantKeep:
    """The random-LTD arm's kept-length schedule over ``steps`` steps; a bad setting raises the
    ``ConfigError`` of its flag."""
    try:
        if config.schedule == "constant":
            return ConstantKeep(seq_len, config.kept_start)
        full_at = int(config.full_at) if config.full_at is not None and config.full_at > 1 else config.full_at
        return MSLG(seq_len, config.kept_start, config.kept_increment, every_steps=config.kept_every,
                    full_at=full_at, total_steps=steps)
    except ConfigError as error:
        raise flag_error(_SCHEDULE_FIELDS.get(error.field, "schedule"), error.message) from None


def _check_task_fields(config: TrainConfig) -> None:
    for name in NOT_FOR_TASK.get(config.task, ()):
        if getattr(config, name) is not None:
            raise flag_error(name, f"does not apply to --task {config.task}")
    if config.task in ("vit", "dit") and config.data:
        raise flag_error("data", f"--task {config.task} trains on Fashion-MNIST; --data is for the text tasks")
    if config.task == "dit" and "mod" in config.arms:  # the flow loss is computed outside the model's forward
        raise flag_error("arms", "the mod arm needs a task whose model returns its loss (gpt, bert, vit, finetune): "
                                 "--task dit computes its loss outside the model, where the routers' loss is not added")
    if config.task != "finetune" and (config.lora or config.lora_rank or config.lora_targets):
        raise flag_error("lora", "applies only to --task finetune (a pretrained model)")
    if not config.lora:
        for name in ("lora_rank", "lora_targets"):
            if getattr(config, name) is not None:
                raise flag_error(name, "applies only with --lora")


def _vit_length(config: TrainConfig) -> int:
    """Patches of the image plus the CLS token: patch size 2 -> 197 tokens, the paper's ViT length."""
    if IMAGE_SIZE % config.patch_size:
        raise flag_error("patch_size", f"must divide the image size {IMAGE_SIZE}, got {config.patch_size}")
    length = (IMAGE_SIZE // config.patch_size) ** 2 + (config.task == "vit")  # dit has no CLS token
    if config.seq_len is not None and config.seq_len != length:
        raise flag_error("seq_len", f"--task {config.task}'s length follows --patch-size "
                                    f"({config.patch_size} -> {length} tokens), got {config.seq_len}")
    return length


def _check_positions(config: TrainConfig) -> None:
    if config.task not in MAX_POSITIONS:
        return
    model, positions = MAX_POSITIONS[config.task]
    if config.seq_len > positions:
        raise flag_error("seq_len", f"{config.seq_len} is beyond the {positions} positions of {model} "
                                    f"(--seq-len at most {positions})")


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
