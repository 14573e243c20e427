"""What every task provides to the training program, and the pieces they share."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from random_ltd.train.config import TrainConfig, flag_error

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
    """A task: its defaults, its data, its model and its loss.

    ``prepare`` loads the data (and raises ``ConfigError`` for bad input) before any training;
    batches are pure functions of (seed, step), so both arms see the same data in the same order.
    """

    name: str = ""
    metric_names: tuple[str, ...] = ("val_loss",)
    # default first kept length, as a fraction of the sequence (the paper: GPT 128/2048,
    # BERT 128/512, ViT 66/197); the default increment is 1/32 of the sequence
    start_fraction: float = 0.25

    def __init__(self, config: TrainConfig):
        self.config = config

    @classmethod
    def defaults(cls, quick: bool) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        """Task-specific checks on a resolved configuration, before any data is loaded."""

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


def check_positions(config: TrainConfig, max_positions: int, model_name: str) -> None:
    if config.seq_len > max_positions:
        raise flag_error("seq_len", f"{config.seq_len} is beyond the {max_positions} positions of {model_name}")


def check_not_set(config: TrainConfig, names: tuple[str, ...], reason: str) -> None:
    for name in names:
        if getattr(config, name) is not None:
            raise flag_error(name, reason)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
