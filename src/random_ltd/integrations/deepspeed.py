"""Random-LTD inside a DeepSpeed engine, configured from the DeepSpeed JSON users already have.

    settings, ds_config = split_config("ds_config.json")      # random-LTD's part; DeepSpeed's without it
    handle = apply_from_config(model, settings, seed=1234)    # before deepspeed.initialize
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    clock = EngineClock(engine, random_ltd.Driver(handle, settings.schedule, batch_size=engine.train_batch_size(),
                                                  seq_len=settings.seq_len))
    for batch in loader:                 # micro-batches
        clock.before_forward()           # sets the kept length once per optimizer step
        loss = engine(batch).loss; engine.backward(loss); engine.step()
        clock.after_engine_step()        # counts the step's layer-tokens when the engine stepped

DeepSpeed's own random-LTD needs its CUDA kernels and ``convert_to_random_ltd``; ``split_config``
switches it off in the config handed to DeepSpeed so the engine does not keep a second schedule.
Nothing here imports DeepSpeed.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.nn as nn

import random_ltd
from random_ltd.deepspeed_config import DeepSpeedRandomLTD, from_deepspeed_config
from random_ltd.driver import Driver
from random_ltd.errors import ConfigError
from random_ltd.integrations.common import StepClock
from random_ltd.integrations.distributed import rank_seed
from random_ltd.lr import LayerTokenLR


def split_config(config: Mapping | str, *, exact: bool = False) -> tuple[DeepSpeedRandomLTD, dict]:
    """``(random-LTD settings, the config for deepspeed.initialize)`` from a whole DeepSpeed config.

    The second is a deep copy whose ``random_ltd.enabled`` is false (everything else, curriculum
    learning included, unchanged). ``exact`` is passed to ``random_ltd.from_deepspeed_config``.
    """
    settings = from_deepspeed_config(config, exact=exact)  # validates, and reports unreadable files
    whole = copy.deepcopy(dict(config)) if isinstance(config, Mapping) else json.loads(Path(config).read_text())
    try:
        section = whole["data_efficiency"]["data_routing"]["random_ltd"]
    except (KeyError, TypeError):
        raise ConfigError("data_efficiency", "give the whole DeepSpeed config (with "
                          "data_efficiency.data_routing.random_ltd), not only its random_ltd section") from None
    section["enabled"] = False
    return settings, whole


def apply_from_config(model: nn.Module, settings: DeepSpeedRandomLTD, *, seed: int, rank: int | None = None,
                      stack: str | None = None) -> random_ltd.RandomLTDHandle:
    """``random_ltd.apply`` on the config's ``random_ltd_layer_id``, seeded for this rank.

    Raises if the model's stack does not have the config's ``total_layer_num`` layers.
    """
    handle = random_ltd.apply(model, settings.layer_ids, seed=rank_seed(seed, rank), stack=stack)
    if handle.num_layers != settings.num_layers:
        random_ltd.remove(model)
        raise ConfigError("total_layer_num", f"{settings.num_layers} in the config, but the model's stack "
                          f"{handle.stack_name!r} has {handle.num_layers} layers")
    return handle


def layer_token_lr(optimizer: Any, settings: DeepSpeedRandomLTD) -> LayerTokenLR | None:
    """The config's ``layer_token_lr_schedule`` as a ``LayerTokenLR`` (``None`` when not enabled).

    DeepSpeed names the warmup and the total but never implemented the schedule; random-ltd
    warms up linearly and decays linearly to 0 over ``total_layer_tokens``. Hand it to the
    ``Driver`` (``lr_scheduler=``), not to ``deepspeed.initialize``: the driver steps it by
    the layer-tokens of each optimizer step.
    """
    lr = settings.layer_token_lr
    if lr is None:
        return None
    if lr.get("warmup_type", "linear") != "linear":
        raise ConfigError("warmup_type", f"{lr['warmup_type']!r}: only a linear warmup is supported")
    for key in ("total_layer_tokens", "warmup_layer_tokens"):
        if key not in lr:
            raise ConfigError(key, "missing from layer_token_lr_schedule")
    return LayerTokenLR(optimizer, total_layer_tokens=lr["total_layer_tokens"],
                        warmup_layer_tokens=lr["warmup_layer_tokens"], decay="linear")


class EngineClock(StepClock):
    """Runs a ``Driver`` on a DeepSpeed engine's optimizer steps (``engine.global_steps``): call
    ``before_forward()`` before every micro-batch and ``after_engine_step()`` after every
    ``engine.step()``; every micro-batch of one optimizer step keeps the same length."""

    def __init__(self, engine: Any, driver: Driver):
        super().__init__(driver, lambda: engine.global_steps)
        self.engine = engine

    def after_engine_step(self) -> bool:
        """Close the step if the engine took an optimizer step; True when it did."""
        return self.after_micro_batch()
