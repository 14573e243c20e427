"""How the dropping arm changes its model: the one hook the training program leaves open.

A method ``prepare``s the freshly built model (its surgery) and returns the handle the ``Driver``
sets the kept length on; after each backward pass it sees the batch and the model's output
(``after_backward``), e.g. to learn from the per-token losses. The training program trains
random-LTD with ``RANDOM_LTD``; ``random_ltd.ablate.methods`` adds the ablation's other methods
(TokenBypass, random-LTD with protected special tokens) on the same loop.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch.nn as nn

from random_ltd.api import apply
from random_ltd.train.tasks import Batch, ModelShape, Task


class Method(Protocol):
    name: str

    def prepare(self, model: nn.Module, task: Task, drop_layers: tuple[int, ...], shape: ModelShape,
                seed: int) -> Any:
        """Apply the surgery to ``model``; return its handle (``set_keep``, ``state_dict``)."""

    def after_backward(self, handle: Any, task: Task, batch: Batch, output: Any) -> None:
        """Called once per training step, after ``loss.backward()``, with the step's batch and output."""


class RandomLTD:
    """The paper's random-LTD: each dropping layer keeps a uniform random subset of the tokens."""

    name = "random_ltd"

    def prepare(self, model: nn.Module, task: Task, drop_layers: tuple[int, ...], shape: ModelShape,
                seed: int) -> Any:
        return apply(model, list(drop_layers), seed=seed)

    def after_backward(self, handle: Any, task: Task, batch: Batch, output: Any) -> None:
        pass


RANDOM_LTD = RandomLTD()
