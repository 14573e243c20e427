"""Random-LTD inside pipeline-parallel stages (``torch.distributed.pipelining``).

A pipeline stage holds a slice of the model's layers: layers ``first_layer .. first_layer + n - 1``
of a stack of ``num_layers``. Applying ``random_ltd.apply`` to a stage as if it were a model would
be wrong twice over: ``"1:-1"`` would spare the stage's first and last layers instead of the
model's, and the kept-length accounting would count only the stage. ``apply_to_stage`` reads the
layer selection against the whole stack, wraps the stage's share of it under the layers' global
positions (so a stage draws what the unsplit model draws with the same seed), and returns a
``PipelineStageHandle`` that reports the whole model's layers, so that a ``Driver`` on every stage
counts the layer-tokens of every stage and steps the same LayerToken LR.

Each dropping layer gathers, runs and scatters inside its stage: the tensors passed between
stages keep their full ``(batch, seq, hidden)`` shape, which pipelining requires. Set the kept
length once per optimizer step (``Driver.before_step``), before ``schedule.step``: every
microbatch of a step then uses it.
"""
from __future__ import annotations

import warnings

import torch.nn as nn

import random_ltd
from random_ltd.api import LayerSelection, RandomLTDHandle, find_layer_stack, parse_layer_selection
from random_ltd.errors import RandomLTDError
from random_ltd.layer import set_position


class PipelineStageHandle:
    """One stage's random-LTD handle, seen as the whole model's (what a ``Driver`` needs).

    ``num_layers`` and ``drop_layers`` describe the whole stack; ``stage_drop_layers`` the
    global indices of the layers this stage wraps; ``local`` is the stage's own
    ``RandomLTDHandle`` (``None`` when the stage holds no dropping layer).
    """

    def __init__(self, local: RandomLTDHandle | None, num_layers: int, drop_layers: list[int],
                 stage_drop_layers: list[int], seed: int):
        self.local = local
        self.num_layers = num_layers
        self.drop_layers = drop_layers
        self.stage_drop_layers = stage_drop_layers
        self._seed = seed
        self._keep: int | None = None

    @property
    def keep(self) -> int | None:
        return self._keep

    @property
    def seed(self) -> int:
        return self._seed if self.local is None else self.local.seed

    def set_keep(self, keep: int | None) -> None:
        if self.local is not None:
            self.local.set_keep(keep)
        self._keep = keep

    def state_dict(self) -> dict:
        return {"seed": self.seed, "keep": self._keep, "local": None if self.local is None else self.local.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.local is not None and state.get("local") is not None:
            self.local.load_state_dict(state["local"])
        self._keep = state.get("keep")

    def remove(self) -> None:
        if self.local is not None:
            self.local.remove()

    def __repr__(self) -> str:
        return (f"PipelineStageHandle(stage layers={self.stage_drop_layers}, model layers={self.drop_layers} "
                f"of {self.num_layers}, keep={self.keep})")


def apply_to_stage(stage: nn.Module, *, first_layer: int, num_layers: int, layers: LayerSelection = "1:-1",
                   seed: int, stack: str | None = None) -> PipelineStageHandle:
    """Apply random-LTD to the layers of one pipeline stage; see the module docstring.

    ``first_layer``: the global index of the stage's first layer; ``num_layers``: the length of the
    whole stack; ``layers``: the selection over the whole stack; ``seed``: the same on every stage
    of one pipeline (and per data-parallel group, e.g. ``mesh_rank_seed``). The stage must hold a
    contiguous run of the stack (``stack`` names its container when there are several).
    """
    _, members = find_layer_stack(stage, stack)
    _check_stage_range(first_layer, len(members), num_layers)
    selected = parse_layer_selection(layers, num_layers)
    mine = [index for index in selected if first_layer <= index < first_layer + len(members)]
    local = None
    if mine:
        with warnings.catch_warnings():  # a middle stage may drop in all its layers, not the model in all of its
            warnings.filterwarnings("ignore", message="random-LTD drops tokens in every layer")
            local = random_ltd.apply(stage, [index - first_layer for index in mine], seed=seed, stack=stack)
        for index in mine:
            set_position(members[index - first_layer][1], index)  # the unsplit model's position
    return PipelineStageHandle(local, num_layers, selected, mine, seed)


def _check_stage_range(first_layer: int, stage_layers: int, num_layers: int) -> None:
    if isinstance(first_layer, bool) or not isinstance(first_layer, int) or first_layer < 0:
        raise RandomLTDError(f"first_layer must be an integer >= 0, got {first_layer!r}")
    if first_layer + stage_layers > num_layers:
        raise RandomLTDError(f"this stage holds layers {first_layer}..{first_layer + stage_layers - 1}, "
                             f"beyond a stack of num_layers={num_layers}")

