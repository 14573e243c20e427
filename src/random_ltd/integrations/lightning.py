"""``RandomLTDCallback``: random-LTD inside a PyTorch Lightning 2.x ``Trainer`` (docs/integrations.md).

    trainer = lightning.Trainer(max_steps=1000, callbacks=[
        RandomLTDCallback(random_ltd.MSLG(seq_len=512, start=128, increment=16, full_at=0.7), layer_token_lr=True)])

It translates Lightning's hooks: ``setup("fit")`` applies random-LTD; the first training batch
builds the run (global batch = micro-batch x ``accumulate_grad_batches`` x ``world_size``) and the
``Driver``; each optimizer step (``trainer.global_step``) gets one kept length; the callback's
``state_dict`` holds the driver and torch's RNG state, restored at ``on_fit_start``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from random_ltd.driver import Driver, restore_rng, rng_state
from random_ltd.errors import ConfigError
from random_ltd.integrations.common import StepClock, batch_rows, check_seed, engine_metrics
from random_ltd.integrations.distributed import apply_on_rank, resume_rank_state
from random_ltd.layer_selection import LayerSelection
from random_ltd.lr import LayerTokenLR, check_layer_token_lr
from random_ltd.run import Run, check_schedule


class RandomLTDCallback(pl.Callback):
    """Apply random-LTD to ``pl_module.<model_attr>`` (``None``: the module itself) and drive its kept
    length from ``global_step``. ``batch_size``: sequences per micro-batch on one device (default:
    read from the first batch). ``layer_token_lr``: ``True`` or a dict of ``LayerTokenLR`` settings
    (``configure_optimizers`` then returns no scheduler). ``seed``: default ``seed_everything``'s.
    ``schedule``, ``layers``, ``stack``, ``keep_prefix_tokens``: as in ``random_ltd.apply``/``Run``."""

    def __init__(self, schedule: Any, layers: LayerSelection = "1:-1", *, model_attr: str | None = "model",
                 batch_size: int | None = None, layer_token_lr: bool | Mapping = False, seed: int | None = None,
                 stack: str | None = None, keep_prefix_tokens: bool = False):
        self.schedule, self.layers, self.model_attr = check_schedule(schedule), layers, model_attr
        self.batch_size, self.layer_token_lr = batch_size, check_layer_token_lr(layer_token_lr)
        self.seed, self.stack, self.keep_prefix_tokens = check_seed(seed), stack, keep_prefix_tokens
        self.handle, self.driver, self.clock = None, None, None
        self._saved: dict | None = None  # loaded from a checkpoint, applied once the driver exists
        self._window_rows = 0  # sequences of this device in the current optimizer step so far

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model = pl_module if self.model_attr is None else getattr(pl_module, self.model_attr, None)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError("model_attr", f"{type(pl_module).__name__}.{self.model_attr} is not a torch module; "
                              "pass model_attr=None to apply random-LTD to the LightningModule itself")
        base_seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.handle = apply_on_rank(model, self.layers, base_seed=base_seed, rank=trainer.global_rank,
                                    stack=self.stack, keep_prefix_tokens=self.keep_prefix_tokens)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved and self._saved.get("rng") is not None:  # before the dataloader's iterator draws from it
            restore_rng(self._saved["rng"])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, _: int) -> None:
        if self.driver is None:
            self._build_driver(trainer, self.batch_size or batch_rows(batch))
        if self.clock.open_step != trainer.global_step:
            self._window_rows = 0
        self.clock.before_forward()
        self._window_rows += batch_rows(batch, self.batch_size)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        if self.clock is None or not self.clock.after_micro_batch(self._window_rows * trainer.world_size):
            return  # accumulating: the optimizer has not stepped yet
        values = {name: float(value) for name, value in engine_metrics(self.driver).items()}
        pl_module.log_dict(values, on_step=True, on_epoch=False, prog_bar=False, logger=True, rank_zero_only=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.handle is not None:
            self.handle.set_keep(None)  # after training the model is a plain transformer again

    def state_dict(self) -> dict[str, Any]:
        return dict(self._saved or {}) if self.driver is None else {"driver": self.driver.state_dict(),
                                                                     "rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = dict(state_dict)

    def _build_driver(self, trainer: pl.Trainer, batch_size: int) -> None:
        self.batch_size = batch_size
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        run = Run.build(self.schedule, batch_size=batch_size * trainer.accumulate_grad_batches * trainer.world_size,
                        num_layers=self.handle.num_layers, drop_layers=self.handle.drop_layers, total_steps=max_steps)
        lr = LayerTokenLR(_single_optimizer(trainer), **run.lr_settings(self.layer_token_lr)) \
            if self.layer_token_lr else None
        self.driver = Driver(self.handle, run.schedule, batch_size=run.batch_size, seq_len=run.seq_len,
                             lr_scheduler=lr)
        self.clock = StepClock(self.driver, lambda: trainer.global_step)
        if self._saved:
            resume_rank_state(self.driver, self._saved["driver"])
            self._saved = None
            for group, last_lr in zip(lr.optimizer.param_groups, lr.get_last_lr(), strict=True) if lr else ():
                group["lr"] = last_lr  # the optimizer was restored with the LR of the step before the save


def _single_optimizer(trainer: pl.Trainer) -> torch.optim.Optimizer:
    if trainer.lr_scheduler_configs:
        raise ConfigError("layer_token_lr", "configure_optimizers already returns an LR scheduler; return only "
                          "the optimizer when the callback provides the LayerToken LR")
    if len(trainer.optimizers) != 1:
        raise ConfigError("layer_token_lr", f"needs exactly one optimizer, the module has {len(trainer.optimizers)}")
    return trainer.optimizers[0]

