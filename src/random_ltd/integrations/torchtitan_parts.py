"""The torchtitan integration's pieces that need no torchtitan import: the adapter of its
``TransformerBlock`` (positions default to the token index; a flex ``BlockMask`` is rebuilt on the
kept tokens), the model config class whose ``build`` applies random-LTD, the per-step setter of
the kept length, and the LayerToken LR as a ``step -> factor`` function.
``random_ltd.integrations.torchtitan`` wires them into torchtitan's extension points.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from random_ltd.adapters import LayerAdapter, register_layer
from random_ltd.api import apply, parse_layer_selection
from random_ltd.attention.flex import gather_block_mask, is_block_mask
from random_ltd.errors import RandomLTDError
from random_ltd.lr import lr_factor
from random_ltd.run import Run

BLOCK_CLASS = "torchtitan.models.common.decoder.TransformerBlock"


def _gather_attention_inputs(layer: torch.nn.Module, arguments: dict, indices: torch.Tensor) -> None:
    """Positions default to the token index (RoPE must see the kept tokens' own positions); a
    ``BlockMask`` is rebuilt on the kept tokens."""
    if arguments.get("positions") is None:
        arguments["positions"] = indices
    masks = arguments.get("attention_masks")
    if masks is None:
        return
    if not is_block_mask(masks):
        raise RandomLTDError(f"attention_masks of type {type(masks).__name__} cannot be gathered for the kept tokens; "
                             "use the flex attention backend")
    arguments["attention_masks"] = gather_block_mask(masks, indices, masks.shape[-2])  # self-attention


ADAPTER = LayerAdapter(name="torchtitan", hidden="x", positions=("positions",), prepare=_gather_attention_inputs)


def register() -> None:
    """Register torchtitan's ``TransformerBlock`` (and its subclasses) for random-LTD; done on use."""
    register_layer(BLOCK_CLASS, ADAPTER)


def dropping_config_class(config_class: type, ltd: Any) -> type:
    """A subclass of the model's config class whose ``build`` applies random-LTD to the built model
    (``ltd``: the converter's config, its ``layers`` and ``seed``)."""

    def build(self, **kwargs):
        model = config_class.build(self, **kwargs)
        register()
        apply(model, ltd.layers, seed=ltd.seed)
        return model

    return type(f"RandomLTD{config_class.__name__}", (config_class,),
                {"build": build, "random_ltd": ltd, "__qualname__": f"RandomLTD{config_class.__qualname__}"})


class KeptLengthStepper:
    """Sets the kept length of every model part from the run's schedule, once per optimizer step."""

    def __init__(self, handles: list, run: Run):
        self.handles, self.run, self.step = handles, run, 0
        self.resume(0)

    def resume(self, step: int) -> None:
        self.step = step
        for handle in self.handles:
            handle.set_keep(self.run.keep(step))

    def advance(self, *args: Any, **kwargs: Any) -> None:
        self.resume(self.step + 1)


def layer_token_lr_lambda(ltd: Any, num_layers: int, total_steps: int, warmup_steps: int,
                          decay: str, min_lr_ratio: float) -> Callable[[int], float]:
    """``step -> LR factor``: warmup over ``warmup_steps`` full steps, then decay over the layer-tokens left."""
    if decay not in ("cosine", "linear"):
        raise RandomLTDError(f"LayerToken LR decays 'cosine' or 'linear', not {decay!r}")
    run = Run.build(ltd.schedule(), batch_size=1, num_layers=num_layers,
                    drop_layers=parse_layer_selection(ltd.layers, num_layers), total_steps=total_steps)
    warmup = min(warmup_steps, total_steps) * run.layer_tokens(run.seq_len)
    total = max(run.layer_tokens_before(total_steps + 1), warmup + 1)  # a step past the end: the last LR is not 0
    return functools.partial(_factor_at, run=run, total=total, warmup=warmup, decay=decay, min_lr_ratio=min_lr_ratio)


def _factor_at(step: int, *, run: Run, total: int, warmup: int, decay: str, min_lr_ratio: float) -> float:
    # Step t's LR counts its own layer-tokens (consumed through t): warmup never starts at 0, as torchtitan's.
    tokens = run.layer_tokens_before(min(step + 1, run.total_steps + 1))
    return lr_factor(min(tokens, total), total, min(warmup, total), decay, min_lr_ratio)
