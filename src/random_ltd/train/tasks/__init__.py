"""The tasks ``random-ltd train`` knows, and how a configuration gets its task's defaults."""
from __future__ import annotations

import dataclasses
import math

from random_ltd.train.config import TrainConfig, flag_error
from random_ltd.train.tasks.base import Batch, ModelShape, Task, cache_dir, to_device
from random_ltd.train.tasks.finetune import FinetuneTask
from random_ltd.train.tasks.text import BERTTask, GPTTask
from random_ltd.train.tasks.vit import ViTTask

TASK_CLASSES: dict[str, type[Task]] = {"gpt": GPTTask, "bert": BERTTask, "vit": ViTTask, "finetune": FinetuneTask}

__all__ = ["Batch", "ModelShape", "Task", "TASK_CLASSES", "cache_dir", "make_task", "resolve_config", "to_device"]


def resolve_config(config: TrainConfig) -> TrainConfig:
    """``config`` with every ``None`` that has a task default filled in, then checked as a whole."""
    task_class = TASK_CLASSES[config.task]
    defaults = task_class.defaults(config.quick)
    if config.kept_every is not None:
        defaults.pop("full_at", None)  # an explicit interval replaces the default full-at point
    if config.tokens is not None:
        defaults.pop("steps")  # the budget is given in tokens
    filled = {name: value for name, value in defaults.items() if getattr(config, name) is None}
    resolved = dataclasses.replace(config, **filled)
    if resolved.task == "vit":
        resolved = _vit_length(resolved)
    resolved = _kept_defaults(resolved, task_class.start_fraction)
    if resolved.eval_every is None:
        resolved = dataclasses.replace(resolved, eval_every=max(1, budget_steps(resolved) // 10))
    if resolved.quick and resolved.threads is None:
        # tiny models gain nothing from threads, and on a shared machine threads wait on each other
        resolved = dataclasses.replace(resolved, threads=1)
    if resolved.checkpoint_every is None:
        resolved = dataclasses.replace(resolved, checkpoint_every=resolved.eval_every)
    _check_kept(resolved)
    if resolved.task != "finetune" and (resolved.lora or resolved.lora_rank or resolved.lora_targets):
        raise flag_error("lora", "applies only to --task finetune (a pretrained model)")
    task_class.check(resolved)
    return resolved


def _vit_length(config: TrainConfig) -> TrainConfig:
    length = ViTTask.seq_len_for(config.patch_size)
    if config.seq_len is not None and config.seq_len != length:
        raise flag_error("seq_len", f"--task vit's length follows --patch-size "
                                     f"({config.patch_size} -> {length} tokens), got {config.seq_len}")
    return dataclasses.replace(config, seq_len=length)


def _kept_defaults(config: TrainConfig, start_fraction: float) -> TrainConfig:
    start = config.kept_start or max(1, math.ceil(start_fraction * config.seq_len))
    increment = config.kept_increment or max(1, config.seq_len // 32)
    return dataclasses.replace(config, kept_start=start, kept_increment=increment)


def _check_kept(config: TrainConfig) -> None:
    if config.kept_start > config.seq_len:
        raise flag_error("kept_start", f"{config.kept_start} is longer than the sequence ({config.seq_len} tokens)")


def budget_steps(config: TrainConfig) -> int:
    """The baseline's number of steps: ``--steps``, or ``--tokens`` rounded up to whole steps."""
    if config.tokens is not None:
        return -(-config.tokens // (config.batch_size * config.seq_len))
    return config.steps


def make_task(config: TrainConfig) -> Task:
    return TASK_CLASSES[config.task](config)
