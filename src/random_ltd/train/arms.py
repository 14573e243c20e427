"""What each arm of a comparison runs: its step count, kept-length schedule and LR schedule.

The baseline trains ``budget_steps`` steps at full length with the ordinary (iteration-based)
warmup + decay. The random-LTD arm drops tokens in ``drop_layers`` following MSLG (or a constant
kept length) and by default follows the LayerToken LR. With ``budget_ratio`` R it trains for as
many steps as it takes to consume R x the baseline's layer-tokens (the paper's 2/3-budget
comparison); otherwise for the same number of steps (same data) as the baseline.
"""
from __future__ import annotations

import dataclasses
import warnings

import torch

from random_ltd.accounting import (
    capacity_length,
    flops_per_step,
    mod_flops_per_step,
    mod_layer_tokens_per_step,
    total_layer_tokens,
)
from random_ltd.errors import RandomLTDError
from random_ltd.layer_selection import parse_layer_selection
from random_ltd.lr import LayerTokenLR, lr_factor
from random_ltd.schedules import ConstantKeep
from random_ltd.search import first_true
from random_ltd.train import tread
from random_ltd.train.config import TrainConfig, budget_steps, flag_error, make_schedule
from random_ltd.train.tasks import ModelShape

__all__ = ["ArmPlan", "drop_layer_indices", "make_lr_scheduler", "make_schedule", "plan_arms", "step_flops"]


@dataclasses.dataclass(frozen=True)
class ArmPlan:
    arm: str
    steps: int
    schedule: object | None  # a kept-length schedule; None: no dropping
    drop_layers: tuple[int, ...]
    lr_clock: str  # "steps" or "layer_tokens"
    layer_tokens: int  # over the whole arm, from the schedule in closed form
    warmup_steps: int
    warmup_layer_tokens: int

    @property
    def drops(self) -> bool:
        return self.schedule is not None


def drop_layer_indices(config: TrainConfig, num_layers: int) -> tuple[int, ...]:
    try:
        return tuple(parse_layer_selection(config.drop_layers, num_layers))
    except RandomLTDError as error:
        raise flag_error("drop_layers", str(error)) from None


def plan_arms(config: TrainConfig, shape: ModelShape) -> dict[str, ArmPlan]:
    steps = budget_steps(config)
    full_step_tokens = config.batch_size * shape.seq_len * shape.num_layers
    warmup_steps = round(config.warmup * steps)
    baseline = ArmPlan("baseline", steps, None, (), "steps", steps * full_step_tokens, warmup_steps,
                       warmup_steps * full_step_tokens)
    plans = {"baseline": baseline}
    if "random_ltd" in config.arms:
        plans["random_ltd"] = _random_ltd_plan(config, shape, baseline, full_step_tokens)
    if "tread" in config.arms:
        if tread.routes_supported():
            plans["tread"] = _tread_plan(config, shape, baseline)
        else:
            warnings.warn(tread.UNAVAILABLE, stacklevel=2)
    if "mod" in config.arms:
        plans["mod"] = _mod_plan(config, shape, baseline)
    return {arm: plans[arm] for arm in config.arms if arm in plans}


def _tread_plan(config: TrainConfig, shape: ModelShape, baseline: ArmPlan) -> ArmPlan:
    """The baseline's steps, one route through the span of ``--drop-layers`` (``tread.py``)."""
    drop_layers = drop_layer_indices(config, shape.num_layers)
    tread.span_of(drop_layers)
    schedule = ConstantKeep(shape.seq_len, tread.kept_tokens(shape.seq_len))
    layer_tokens = _layer_tokens(schedule, baseline.steps, config, shape, drop_layers)
    warmup_steps = baseline.warmup_steps
    return ArmPlan("tread", baseline.steps, schedule, drop_layers, config.lr_clock, layer_tokens, warmup_steps,
                   min(baseline.warmup_layer_tokens, layer_tokens))


def _mod_plan(config: TrainConfig, shape: ModelShape, baseline: ArmPlan) -> ArmPlan:
    """The baseline's steps, Mixture-of-Depths on ``--drop-layers`` at ``--mod-capacity``: a constant kept
    length equal to what each routed layer runs, so that the driver counts MoD's layer-tokens."""
    drop_layers = drop_layer_indices(config, shape.num_layers)
    schedule = ConstantKeep(shape.seq_len, capacity_length(config.mod_capacity, shape.seq_len))
    layer_tokens = baseline.steps * mod_layer_tokens_per_step(shape.seq_len, config.batch_size, shape.num_layers,
                                                              list(drop_layers), config.mod_capacity)
    return ArmPlan("mod", baseline.steps, schedule, drop_layers, config.lr_clock, layer_tokens,
                   baseline.warmup_steps, min(baseline.warmup_layer_tokens, layer_tokens))


def _random_ltd_plan(config: TrainConfig, shape: ModelShape, baseline: ArmPlan, full_step_tokens: int) -> ArmPlan:
    drop_layers = drop_layer_indices(config, shape.num_layers)
    steps = baseline.steps
    if config.budget_ratio is not None:
        steps = _steps_for_layer_tokens(config, shape, drop_layers, config.budget_ratio * baseline.layer_tokens)
    schedule = make_schedule(config, shape.seq_len, steps)
    layer_tokens = _layer_tokens(schedule, steps, config, shape, drop_layers)
    warmup_steps = round(config.warmup * steps) if config.lr_clock == "steps" else baseline.warmup_steps
    return ArmPlan("random_ltd", steps, schedule, drop_layers, config.lr_clock, layer_tokens, warmup_steps,
                   min(baseline.warmup_layer_tokens, layer_tokens))


def _layer_tokens(schedule, steps: int, config: TrainConfig, shape: ModelShape, drop_layers) -> int:
    return total_layer_tokens(schedule, steps, batch_size=config.batch_size, num_layers=shape.num_layers,
                              drop_layers=list(drop_layers))


def _steps_for_layer_tokens(config: TrainConfig, shape: ModelShape, drop_layers, target: float) -> int:
    """The fewest steps whose layer-tokens reach ``target`` (binary search; the schedule is
    stretched to each candidate length, as it would be in training)."""
    cheapest_step = config.batch_size * ((shape.num_layers - len(drop_layers)) * shape.seq_len
                                         + len(drop_layers) * min(config.kept_start, shape.seq_len))
    def reaches(steps: int) -> bool:
        return _layer_tokens(make_schedule(config, shape.seq_len, steps), steps, config, shape, drop_layers) >= target

    return first_true(reaches, 1, max(1, int(target // cheapest_step) + 1))


def make_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, plan: ArmPlan):
    if plan.lr_clock == "layer_tokens":
        return LayerTokenLR(optimizer, plan.layer_tokens, warmup_layer_tokens=plan.warmup_layer_tokens,
                                       decay=config.lr_decay, min_lr_ratio=config.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, plan.steps, plan.warmup_steps, config.lr_decay, config.min_lr_ratio))


def step_flops(config: TrainConfig, shape: ModelShape, plan: ArmPlan, kept: int) -> int:
    """One training step's FLOPs (``accounting``); the ``mod`` arm's include its routers."""
    if plan.arm == "mod":
        return mod_flops_per_step(shape.seq_len, config.batch_size, shape.num_layers, shape.hidden,
                                  routed_layers=list(plan.drop_layers), capacity=config.mod_capacity,
                                  ffn_dim=shape.ffn_hidden, vocab_size=shape.vocab_size)
    return flops_per_step(shape.seq_len, config.batch_size, shape.num_layers, shape.hidden, kept=kept,
                          drop_layers=list(plan.drop_layers), ffn_dim=shape.ffn_hidden, vocab_size=shape.vocab_size)
