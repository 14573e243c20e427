"""The ``mod`` arm: Mixture-of-Depths (``random_ltd.mod``) routing the layers of ``--drop-layers``.

Each routed layer gets a new router (real parameters: the optimizer is built after ``prepare``)
and runs the top ``--mod-capacity`` of each sequence's tokens (default 0.5, the layer-tokens of a
constant random-LTD half). The routers' prediction loss, times ``--mod-aux-coef``, is added to the
model's training loss by ``mod.apply``'s hook, as MoE models add their load-balancing loss; the
metrics line reports it as ``mod/aux_loss``. The capacity is fixed: the arm's plan has a constant
kept length equal to it, so the driver counts MoD's layer-tokens, and the handle the driver sees
ignores the kept length the driver sets (``tread.RoutedHandle``).

Evaluation routes causally (a token runs a routed layer when its router logit is positive, as in
generation), and a batch whose sequences route different numbers of tokens cannot run as one: the
arm evaluates its validation batches one sequence at a time (``single_sequences``), the same
tokens and the same per-token mean as the other arms.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from random_ltd import mod
from random_ltd.train.config import TrainConfig
from random_ltd.train.tasks import Batch, ModelShape, Task
from random_ltd.train.tread import RoutedHandle


class MixtureOfDepthsArm:
    """The method of the ``mod`` arm (``methods.Method``)."""

    name = "mod"

    def __init__(self, config: TrainConfig):
        self.capacity, self.aux_coef = config.mod_capacity, config.mod_aux_coef

    def prepare(self, model: nn.Module, task: Task, drop_layers: tuple[int, ...], shape: ModelShape,
                seed: int) -> Any:
        """Routers on ``drop_layers`` (drawn from torch's RNG; MoD routes without ``seed``)."""
        handle = mod.apply(model, list(drop_layers), capacity=self.capacity, aux_loss_coef=self.aux_coef)
        return RoutedHandle(handle)

    def after_backward(self, handle: Any, task: Task, batch: Batch, output: Any) -> None:
        pass


def single_sequences(batches: list[Batch]) -> list[Batch]:
    """Each batch cut into batches of one sequence (every tensor split along its first dimension)."""
    return [{key: value[index:index + 1] if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
            for batch in batches for index in range(_batch_size(batch))]


def _batch_size(batch: Batch) -> int:
    return next(value.shape[0] for value in batch.values() if isinstance(value, torch.Tensor))
