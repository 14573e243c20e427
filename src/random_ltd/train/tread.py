"""The ``tread`` arm: span routing (TREAD, Krause et al. 2025) through the span of ``--drop-layers``.

One uniform random half of each image's tokens (TREAD's keep fraction) is drawn at the span's
first layer and runs through every layer of it; the other half skips the span and rejoins at its
end. With the default ``--drop-layers 1:-1`` the span is every layer but the first and the last
(TREAD recommends about 2 to B-4 of B layers; for the 4 to 8 layers of these tasks that leaves
almost nothing). Routing needs ``random_ltd.apply(model, routes=...)``; where the installed
version lacks it, the arm is left out with a warning.

The arm's plan uses a constant kept length equal to the route's (``floor(keep * seq_len)``), so
the driver's layer-token count, the FLOP estimate and the LayerToken LR are exactly those of the
routed layers; the handle ignores the kept length the driver sets (the route fixes it).
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import torch.nn as nn

from random_ltd.api import apply
from random_ltd.train.config import flag_error
from random_ltd.train.tasks import Batch, ModelShape, Task

KEEP = 0.5  # TREAD's fraction of tokens kept through a route
UNAVAILABLE = ("--arms tread left out: this random_ltd.apply takes no routes= (span routing); "
               "install a version with span routing to run it")


def routes_supported() -> bool:
    return "routes" in inspect.signature(apply).parameters


def kept_tokens(seq_len: int) -> int:
    """What a route keeping ``KEEP`` of ``seq_len`` tokens keeps: ``floor(KEEP * seq_len)``, at least one."""
    return max(1, math.floor(KEEP * seq_len))


def span_of(drop_layers: tuple[int, ...]) -> tuple[int, int]:
    """The route's first and last layer: ``--drop-layers`` must be one contiguous run of layers."""
    if not drop_layers or list(drop_layers) != list(range(drop_layers[0], drop_layers[-1] + 1)):
        raise flag_error("drop_layers", f"the tread arm routes through one span of consecutive layers, got "
                                        f"{list(drop_layers)}")
    return drop_layers[0], drop_layers[-1]


class RoutedHandle:
    """The route's handle as the driver sees it: ``set_keep`` is a no-op, the rest is the handle's."""

    def __init__(self, handle: Any):
        self._handle = handle

    def set_keep(self, keep: int | None) -> None:
        pass  # the route keeps its own fraction; the plan's constant kept length only counts it

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class Tread:
    """The method of the ``tread`` arm: one route through the span of the plan's layers."""

    name = "tread"

    def prepare(self, model: nn.Module, task: Task, drop_layers: tuple[int, ...], shape: ModelShape,
                seed: int) -> Any:
        first, last = span_of(drop_layers)
        return RoutedHandle(apply(model, routes=[(KEEP, first, last)], seed=seed))

    def after_backward(self, handle: Any, task: Task, batch: Batch, output: Any) -> None:
        pass


TREAD = Tread()
