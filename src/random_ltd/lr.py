"""The LayerToken learning-rate schedule (paper Section 3.3).

Warmup and decay advance with the layer-tokens consumed instead of the iteration count. With
random-LTD, early steps consume fewer layer-tokens, so the LR stays high for more steps; with
nothing dropped every step consumes ``batch * seq_len * num_layers`` and the schedule is the
ordinary token-based one.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from random_ltd.errors import ConfigError
from random_ltd.schedules import check_int

DECAYS = ("cosine", "linear", "constant")


def lr_factor(consumed: int, total: int, warmup: int = 0, decay: str = "cosine", min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base LR after ``consumed`` of ``total`` layer-tokens.

    Linear warmup from 0 over the first ``warmup``; then over the remaining ``total - warmup``
    a decay from 1 to ``min_lr_ratio`` (cosine: ``r + (1 - r) (1 + cos(pi p)) / 2``; linear:
    ``1 - (1 - r) p``; constant: 1), with p the fraction of the decay done; ``min_lr_ratio``
    after ``total``.
    """
    if consumed < warmup:
        return consumed / warmup
    if decay == "constant":
        return 1.0
    if consumed >= total:
        return min_lr_ratio
    progress = (consumed - warmup) / (total - warmup)
    if decay == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LayerTokenLR(LRScheduler):
    """A ``torch.optim.lr_scheduler`` whose clock is the layer-tokens consumed.

    Call ``step(layer_tokens)`` after ``optimizer.step()`` with the layer-tokens of that step
    (``Driver.after_step`` does it); ``step()`` without an argument advances by
    ``layer_tokens_per_step`` when it is set, else it is an error (never a silent no-op).
    The LR of the next step is ``base_lr * lr_factor(consumed, total, warmup, decay, min_lr_ratio)``.
    ``state_dict`` / ``load_state_dict`` (inherited) carry the counter: resuming is exact.

    Args:
        total_layer_tokens: the budget over which the LR decays (use the random-LTD run's total,
            e.g. ``plan.layer_tokens``, so that it ends when training ends).
        warmup_layer_tokens: the warmup length, in layer-tokens.
        decay: "cosine", "linear" or "constant".
        min_lr_ratio: the floor of the decay, as a fraction of the base LR.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_layer_tokens: int, warmup_layer_tokens: int = 0,
                 decay: str = "cosine", min_lr_ratio: float = 0.0, layer_tokens_per_step: int | None = None,
                 last_epoch: int = -1):
        self.total_layer_tokens = check_int("total_layer_tokens", total_layer_tokens)
        self.warmup_layer_tokens = check_int("warmup_layer_tokens", warmup_layer_tokens, minimum=0)
        if self.warmup_layer_tokens > self.total_layer_tokens:
            raise ConfigError("warmup_layer_tokens",
                              f"{warmup_layer_tokens} exceeds total_layer_tokens={total_layer_tokens}")
        if decay not in DECAYS:
            raise ConfigError("decay", f"{decay!r} is not one of {', '.join(DECAYS)}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ConfigError("min_lr_ratio", f"must be in [0, 1], got {min_lr_ratio!r}")
        self.decay = decay
        self.min_lr_ratio = float(min_lr_ratio)
        self.layer_tokens_per_step = check_int("layer_tokens_per_step", layer_tokens_per_step, optional=True)
        self.consumed_layer_tokens = 0
        self._constructing = True  # the base constructor calls step() once, to set the initial LR
        super().__init__(optimizer, last_epoch)
        self._constructing = False

    @classmethod
    def from_plan(cls, optimizer: torch.optim.Optimizer, plan: Any, *, warmup_tokens: int = 0,
                  **kwargs: Any) -> LayerTokenLR:
        """Budget from a ``random_ltd.Plan``: decay over its layer-tokens (``plan.layer_tokens``); ``warmup_tokens``
        training tokens of warmup count ``num_layers`` layer-tokens each (as in the baseline)."""
        return cls(optimizer, plan.layer_tokens, warmup_layer_tokens=warmup_tokens * plan.num_layers,
                   **kwargs)

    def factor(self) -> float:
        return lr_factor(self.consumed_layer_tokens, self.total_layer_tokens, self.warmup_layer_tokens,
                         self.decay, self.min_lr_ratio)

    def get_lr(self) -> list[float]:
        return [base_lr * self.factor() for base_lr in self.base_lrs]

    def step(self, layer_tokens: int | None = None) -> None:  # type: ignore[override]
        """Advance the clock by the layer-tokens of the step just taken and set the next LR."""
        if self._constructing:
            layer_tokens = 0
        elif layer_tokens is None:
            if self.layer_tokens_per_step is None:
                raise ConfigError("layer_tokens", "LayerTokenLR.step() needs the layer-tokens of the step "
                                  "(or construct it with layer_tokens_per_step=...)")
            layer_tokens = self.layer_tokens_per_step
        self.consumed_layer_tokens += check_int("layer_tokens", layer_tokens, minimum=0)
        super().step()


LR_SETTINGS = ("total_layer_tokens", "warmup_layer_tokens", "decay", "min_lr_ratio")


def check_layer_token_lr(value: Any) -> bool | dict:
    """An integration's ``layer_token_lr=`` option: off, on, or a dict of ``LayerTokenLR`` settings."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if not isinstance(value, Mapping) or set(value) - set(LR_SETTINGS):
        raise ConfigError("layer_token_lr",
                          f"must be True/False or a dict with keys among {LR_SETTINGS}, got {value!r}")
    return dict(value)
