"""The tasks ``random-ltd train`` knows: their data, models and losses (their defaults and rules
are in ``random_ltd.train.config``)."""
from __future__ import annotations

from random_ltd.train.config import TrainConfig, budget_steps, resolve
from random_ltd.train.tasks.base import Batch, ModelShape, Task, cache_dir, to_device
from random_ltd.train.tasks.dit import DiTTask
from random_ltd.train.tasks.finetune import FinetuneTask
from random_ltd.train.tasks.text import BERTTask, GPTTask
from random_ltd.train.tasks.vit import ViTTask

TASK_CLASSES: dict[str, type[Task]] = {"gpt": GPTTask, "bert": BERTTask, "vit": ViTTask, "finetune": FinetuneTask,
                                     "dit": DiTTask}
resolve_config = resolve  # the name the ablation and the benchmark call it by

__all__ = ["Batch", "ModelShape", "Task", "TASK_CLASSES", "budget_steps", "cache_dir", "make_task", "resolve",
           "resolve_config", "to_device"]


def make_task(config: TrainConfig) -> Task:
    return TASK_CLASSES[config.task](config)
