"""What every task provides to the training program, and the pieces they share."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from random_ltd.train.config import TrainConfig

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What the accounting needs to know about a model: layers, width, tokens per example."""

    num_layers: int
    hidden: int
    seq_len: int
    ffn_hidden: int
    vocab_size: int = 0


class Task:
    """A task: its data, its model and its loss, for a resolved configuration.

    ``prepare`` loads the data (and raises ``ConfigError`` for input the configuration alone could
    not rule out: a corpus too small, a missing download) before any training; batches are pure
    functions of (seed, step), so both arms see the same data in the same order.
    """

    name: str = ""
    metric_names: tuple[str, ...] = ("val_loss",)

    def __init__(self, config: TrainConfig):
        self.config = config

    def prepare(self) -> None:
        raise NotImplementedError

    def describe_data(self) -> dict:
        raise NotImplementedError

    def shape(self) -> ModelShape:
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """A freshly initialised model (weights drawn from torch's global RNG)."""
        raise NotImplementedError

    def train_batch(self, seed: int, step: int) -> Batch:
        raise NotImplementedError

    def val_batches(self) -> list[Batch]:
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """The model's output on a training batch; the program trains its ``loss``."""
        return model(**batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: list[Batch]) -> dict[str, float]:
        """Mean loss per predicted token over the validation batches, at full length."""
        total, count = 0.0, 0
        for batch in batches:
            targets = count_targets(batch["labels"])
            total += float(model(**batch).loss) * targets
            count += targets
        return {"val_loss": total / count}


def count_targets(labels: torch.Tensor) -> int:
    if labels.dim() == 1:  # one class per example
        return labels.numel()
    return int((labels != -100).sum())


def cache_dir(config: TrainConfig) -> Path:
    """``--cache-dir``, else ``$RANDOM_LTD_CACHE``, else ``~/.cache/random-ltd``."""
    chosen = config.cache_dir or os.environ.get("RANDOM_LTD_CACHE") or "~/.cache/random-ltd"
    return Path(chosen).expanduser()


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
