"""What every engine integration shares: random-LTD applied once per model, the base seed checked
once, and the clock that opens an optimizer step at its first micro-batch and closes it when the
engine's step counter has moved on."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from random_ltd.api import RandomLTDHandle, apply, get_handle
from random_ltd.driver import Driver
from random_ltd.errors import ConfigError
from random_ltd.layer_selection import LayerSelection, parse_layer_selection


def check_seed(seed: Any, field: str = "seed", *, optional: bool = True) -> int | None:
    """A base seed (or a rank): an integer >= 0; ``None`` (the engine's own seed) where ``optional``."""
    if seed is None and optional:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(field, f"must be an integer >= 0, got {seed!r}")
    return seed


def ensure_applied(model: Any, layers: LayerSelection, *, seed: int, stack: str | None = None,
                   keep_prefix_tokens: bool = False) -> RandomLTDHandle:
    """The model's handle, applying random-LTD first if it has none (never twice: a second trainer
    on the same model keeps the handle, and must ask for the same layers)."""
    handle = get_handle(model)
    if handle is None:
        return apply(model, layers, seed=seed, stack=stack, keep_prefix_tokens=keep_prefix_tokens)
    wanted = parse_layer_selection(layers, handle.num_layers)
    if wanted != handle.drop_layers:
        raise ConfigError("layers", f"random-LTD is already applied to this model on layers {handle.drop_layers}, "
                          f"not {wanted}; random_ltd.remove(model) first to change them")
    return handle


class StepClock:
    """Runs a ``Driver`` on an engine that counts its own optimizer steps (``engine_step()``).

    Call ``before_forward()`` before every micro-batch: the first one of an optimizer step sets
    that step's kept length, so every micro-batch of a step keeps the same length. Call
    ``after_micro_batch()`` after each: once the engine's step has moved on, the step's
    layer-tokens are counted (``batch_size``: the step's sequences, when short).
    """

    def __init__(self, driver: Driver, engine_step: Callable[[], int]):
        self.driver, self.engine_step = driver, engine_step
        self.open_step: int | None = None

    def before_forward(self) -> int:
        step = self.engine_step()
        if self.open_step != step:
            self.open_step = step
            self.driver.before_step(step)
        return self.driver.kept

    def after_micro_batch(self, batch_size: int | None = None) -> bool:
        """True when the engine took its optimizer step (the step is then counted)."""
        if self.open_step is None or self.engine_step() == self.open_step:
            return False
        self.driver.after_step(batch_size)
        self.open_step = None
        return True


def engine_metrics(driver: Driver | None) -> dict[str, float]:
    """The driver's metrics for an engine's log: all but ``random_ltd/step`` (the engine logs its own step)."""
    values = {} if driver is None else driver.metrics()
    values.pop("random_ltd/step", None)
    return values


def batch_rows(batch: Any, default: int | None = None) -> int:
    """Sequences in a micro-batch: the first dimension of its first tensor (else ``default``)."""
    values = [batch] if isinstance(batch, torch.Tensor) else batch.values() if isinstance(batch, Mapping) \
        else batch if isinstance(batch, (list, tuple)) else []
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    if default is not None:
        return default
    raise ConfigError("batch_size", f"cannot read the batch size from a {type(batch).__name__}: "
                      "pass RandomLTDCallback(batch_size=...)")
