"""Random-LTD in torchtitan (0.3.0), through its extension points (docs/scale.md):

    def llama3_debugmodel_random_ltd() -> Trainer.Config:
        ltd = RandomLTDConverter.Config(seq_len=2048, start=128, increment=16, every_steps=10)
        return enable(llama3_debugmodel(), ltd)

``RandomLTDConverter`` (a ``ModelConfigConverter``) makes the built model's blocks in ``layers`` drop
tokens before torchtitan parallelizes them; ``post_optimizer_build`` seeds each data-parallel group
and sets the kept length after each optimizer step; ``LayerTokenLRSchedulers`` clocks the LR by
layer-tokens and restores the step on resume. A flex ``BlockMask`` is rebuilt on the kept tokens.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from torchtitan.components.optimizer import LRSchedulersContainer  # noqa: E402  (this module needs torchtitan)
from torchtitan.protocols.model import ModelConfigConverter  # noqa: E402

import random_ltd
from random_ltd.api import get_handle, parse_layer_selection
from random_ltd.errors import RandomLTDError
from random_ltd.integrations.distributed import rank_seed
from random_ltd.integrations.torchtitan_parts import (  # noqa: F401
    ADAPTER,
    BLOCK_CLASS,
    KeptLengthStepper,
    dropping_config_class,
    layer_token_lr_lambda,
    register,
)
from random_ltd.run import Run


class RandomLTDConverter(ModelConfigConverter):
    """Turns a torchtitan decoder config into one whose built model drops tokens in ``layers``."""

    @dataclasses.dataclass(kw_only=True, slots=True)
    class Config(ModelConfigConverter.Config):
        seq_len: int
        """Training sequence length (``training.seq_len``): where the schedule ends."""
        start: int
        """Kept length of the first steps (MSLG)."""
        increment: int
        """Tokens added to the kept length every ``every_steps`` steps (MSLG)."""
        every_steps: int
        """Optimizer steps between increments (MSLG)."""
        layers: str = "1:-1"
        """Which blocks drop tokens, over the whole stack (default: all but the first and the last)."""
        seed: int = 0
        """Base seed of the draws; each data-parallel group derives its own from it."""

        def schedule(self) -> random_ltd.MSLG:
            return random_ltd.MSLG(seq_len=self.seq_len, start=self.start, increment=self.increment,
                                   every_steps=self.every_steps)

    def __init__(self, config: Config, **kwargs: Any):
        config.schedule()  # validates the schedule (ConfigError)
        self.config = config

    def convert(self, model_config: Any) -> Any:
        layers = getattr(model_config, "layers", None)
        if not isinstance(layers, list) or not layers:
            raise RandomLTDError(f"{type(model_config).__name__} has no list of layer configs to drop tokens in")
        parse_layer_selection(self.config.layers, len(layers))  # validates against this model
        register()
        return dropping_config_class(type(model_config), self.config)(
            **{f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config) if f.init})


def post_optimizer_build(optimizers: Any, model_parts: list, parallel_dims: Any, *, ltd: RandomLTDConverter.Config,
                         previous: Callable | None = None) -> KeptLengthStepper:
    """torchtitan's ``post_optimizer_build_fn``: per-DP-group seeds and the per-step kept length."""
    if previous is not None:
        previous(optimizers, model_parts, parallel_dims)
    handles = [handle for handle in map(get_handle, model_parts) if handle is not None]
    if not handles:
        raise RandomLTDError("no model part has random-LTD applied; was the RandomLTDConverter's config used?")
    dp_index = parallel_dims.get_mesh("batch").get_local_rank() if parallel_dims.dp_enabled else 0
    for handle in handles:
        handle.load_state_dict({**handle.state_dict(), "seed": rank_seed(ltd.seed, dp_index)})
    run = Run.build(ltd.schedule(), batch_size=1, num_layers=handles[0].num_layers, drop_layers=handles[0].drop_layers)
    stepper = KeptLengthStepper(handles, run)
    optimizers.register_step_post_hook(stepper.advance)
    optimizers.random_ltd_stepper = stepper  # LayerTokenLRSchedulers restores its step on resume
    return stepper


class LayerTokenLRSchedulers(LRSchedulersContainer):
    """LayerToken LR in torchtitan's scheduler container (its ``LambdaLR`` keyed by the step).

    The kept length is a pure function of the step, so the layer-tokens consumed before step
    ``t`` are too: the LR factor is ``lr_factor(LT(t), LT(total))`` with warmup counted in full
    layer-tokens, and torchtitan's checkpoints (which keep the step) resume it exactly.
    """

    @dataclasses.dataclass(kw_only=True, slots=True)
    class Config(LRSchedulersContainer.Config):
        ltd: RandomLTDConverter.Config | None = None
        """The random-LTD settings whose layer-tokens clock the LR."""
        num_layers: int = 0
        """Blocks in the model's stack."""

        def build(self, *, optimizers, training_steps):  # type: ignore[override]
            if self.ltd is None or self.num_layers <= 0:
                raise RandomLTDError("LayerTokenLRSchedulers.Config needs ltd and num_layers")
            total_steps = self.total_steps if self.total_steps is not None else training_steps
            factor = layer_token_lr_lambda(self.ltd, self.num_layers, total_steps, self.warmup_steps,
                                           self.decay_type, self.min_lr_factor)
            return LayerTokenLRSchedulers(optimizers, factor)

    def __init__(self, optimizers: Any, lr_lambda: Callable) -> None:
        super().__init__(optimizers, lr_lambda)
        self.stepper = getattr(optimizers, "random_ltd_stepper", None)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torchtitan's resume: the LR from the saved step, and the kept length of that step."""
        super().load_state_dict(state_dict)
        if self.stepper is not None:
            self.stepper.resume(state_dict["last_epoch"])


def enable(trainer_config: Any, ltd: RandomLTDConverter.Config, *, layer_token_lr: bool = True) -> Any:
    """Random-LTD in a torchtitan ``Trainer.Config`` (model converter, per-step hook, LayerToken LR); returns it."""
    spec = trainer_config.model_spec
    if getattr(type(spec.model), "random_ltd", None) is not None:
        raise RandomLTDError("random-LTD is already enabled in this config")
    if trainer_config.training.seq_len != ltd.seq_len:
        raise RandomLTDError(f"the schedule's seq_len={ltd.seq_len} differs from training.seq_len="
                             f"{trainer_config.training.seq_len}")
    spec.model = ltd.build().convert(spec.model)
    spec.post_optimizer_build_fn = functools.partial(post_optimizer_build, ltd=ltd,
                                                     previous=spec.post_optimizer_build_fn)
    if layer_token_lr:
        old = trainer_config.lr_scheduler
        trainer_config.lr_scheduler = LayerTokenLRSchedulers.Config(
            warmup_steps=old.warmup_steps, total_steps=old.total_steps, decay_type=old.decay_type,
            min_lr_factor=old.min_lr_factor, ltd=ltd, num_layers=len(spec.model.layers))
    return trainer_config
