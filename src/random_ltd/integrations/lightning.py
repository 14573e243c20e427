"""``RandomLTDCallback``: random-LTD inside a PyTorch Lightning 2.x ``Trainer``.

    trainer = lightning.Trainer(max_steps=1000, callbacks=[
        RandomLTDCallback(random_ltd.MSLG(seq_len=512, start=128, increment=16, full_at=0.7), layer_token_lr=True)])

Hook by hook:

- ``setup("fit")``: applies random-LTD to the LightningModule's ``model`` attribute (or the
  module itself, see ``model_attr``), once; each rank's seed is ``rank_seed(seed, global_rank)``.
- The first training batch builds the ``random_ltd.Driver`` (global batch = per-device batch x
  ``accumulate_grad_batches`` x ``world_size``) and, with ``layer_token_lr``, a ``LayerTokenLR`` on
  the optimizer, stepped by the driver with each step's layer-tokens.
- ``on_train_batch_start`` / ``on_train_batch_end``: the kept length is set at the first
  micro-batch of each optimizer step (``trainer.global_step``) and the step's layer-tokens are
  counted once the optimizer has stepped, so gradient accumulation keeps one kept length per step
  (a short window at an epoch's end counts the sequences it had).
  ``random_ltd/kept_len``, ``random_ltd/layer_tokens`` (and ``random_ltd/lr``) go to
  ``LightningModule.log``, hence to every Lightning logger.
- Checkpoints: ``state_dict`` holds the driver (counters, LR, the handle's state) and torch's
  RNG state, restored at ``on_fit_start`` of a resumed ``fit(ckpt_path=...)``, so kept lengths,
  LR, index draws, dropout and a shuffling sampler's order continue as if never interrupted
  from a checkpoint saved at the last batch of an epoch (``ModelCheckpoint(every_n_train_steps=...)``).
  Lightning restarts a mid-epoch checkpoint's epoch unless the dataloader is resumable, and
  a checkpoint saved at ``on_train_epoch_end`` does not replay exactly even without random-LTD;
  the kept lengths and LR still continue exactly from either.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

import random_ltd
from random_ltd.accounting import total_layer_tokens
from random_ltd.driver import Driver, restore_rng, rng_state
from random_ltd.errors import ConfigError
from random_ltd.integrations.distributed import load_rank_state, rank_seed
from random_ltd.layer_selection import LayerSelection, parse_layer_selection
from random_ltd.lr import LayerTokenLR, check_layer_token_lr


class RandomLTDCallback(pl.Callback):
    """Apply random-LTD to a LightningModule's model and drive its kept length from ``global_step``.

    Args:
        schedule: a kept-length schedule (``random_ltd.MSLG``, ``ConstantKeep``, ...); ``full_at``
            fractions resolve against the Trainer's ``max_steps`` (give ``max_steps``),
            ``every_tokens`` against the global batch.
        layers, stack, keep_prefix_tokens: as in ``random_ltd.apply``.
        model_attr: the attribute of the LightningModule holding the transformer (default
            ``"model"``; ``None``: the LightningModule itself).
        batch_size: sequences per micro-batch on one device (default: read from the first batch).
        layer_token_lr: ``True`` for a ``LayerTokenLR`` over the run's planned layer-tokens (cosine,
            no warmup), or a dict of ``total_layer_tokens``, ``warmup_layer_tokens``, ``decay``,
            ``min_lr_ratio``. ``configure_optimizers`` must then return no scheduler.
        seed: base seed of the index draws (default: ``seed_everything``'s seed, else 0).
    """

    def __init__(self, schedule: Any, layers: LayerSelection = "1:-1", *, model_attr: str | None = "model",
                 batch_size: int | None = None, layer_token_lr: bool | Mapping = False, seed: int | None = None,
                 stack: str | None = None, keep_prefix_tokens: bool = False):
        if not callable(schedule) or not isinstance(getattr(schedule, "seq_len", None), int):
            raise ConfigError("schedule",
                              f"must be a kept-length schedule such as random_ltd.MSLG(...), got {schedule!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError("seed", f"must be an integer >= 0 or None, got {seed!r}")
        self.schedule, self.layers, self.model_attr = schedule, layers, model_attr
        self.batch_size = batch_size
        self.layer_token_lr = check_layer_token_lr(layer_token_lr)
        self.seed, self.stack, self.keep_prefix_tokens = seed, stack, keep_prefix_tokens
        self.handle: random_ltd.RandomLTDHandle | None = None
        self.driver: Driver | None = None
        self.lr_scheduler: LayerTokenLR | None = None
        self._saved: dict | None = None  # loaded from a checkpoint, applied once the driver exists
        self._step_started: int | None = None
        self._window_rows = 0  # sequences of this device in the current optimizer step so far

    # ---- Lightning hooks ----
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.handle = self.ensure_applied(pl_module, trainer.global_rank)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before the training dataloader's iterator is made, as in the interrupted run after its
        # save: the iterator's seed and a shuffling sampler's order draw from this RNG too.
        if self._saved and self._saved.get("rng") is not None:
            restore_rng(self._saved["rng"])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.driver is None:
            self.batch_size = self.batch_size or batch_rows(batch)
            self._build_driver(trainer)
        if self._step_started != trainer.global_step:  # the first micro-batch of an optimizer step
            self.driver.before_step(trainer.global_step)
            self._step_started, self._window_rows = trainer.global_step, 0
        self._window_rows += self._rows(batch)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        driver = self.driver
        if driver is None or trainer.global_step == self._step_started:
            return  # accumulating: the optimizer has not stepped yet
        driver.after_step(batch_size=self._window_rows * trainer.world_size)  # short at an epoch's end
        self._step_started = None
        values = {name: float(value) for name, value in driver.metrics().items() if name != "random_ltd/step"}
        pl_module.log_dict(values, on_step=True, on_epoch=False, prog_bar=False, logger=True, rank_zero_only=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.handle is not None:
            self.handle.set_keep(None)  # after training the model is a plain transformer again

    # ---- checkpoints ----
    def state_dict(self) -> dict[str, Any]:
        if self.driver is None:
            return dict(self._saved or {})
        return {"driver": self.driver.state_dict(), "rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = dict(state_dict)

    # ---- pieces ----
    def ensure_applied(self, pl_module: pl.LightningModule, rank: int) -> random_ltd.RandomLTDHandle:
        """The handle of the module's model, applying random-LTD first if it has none (never twice)."""
        model = pl_module if self.model_attr is None else getattr(pl_module, self.model_attr, None)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError("model_attr", f"{type(pl_module).__name__}.{self.model_attr} is not a torch module; "
                              "pass model_attr=None to apply random-LTD to the LightningModule itself")
        handle = random_ltd.get_handle(model)
        if handle is None:
            return random_ltd.apply(model, self.layers, seed=rank_seed(self._base_seed(), rank), stack=self.stack,
                                    keep_prefix_tokens=self.keep_prefix_tokens)
        if parse_layer_selection(self.layers, handle.num_layers) != handle.drop_layers:
            raise ConfigError("layers", f"random-LTD is already applied on layers {handle.drop_layers}; "
                              "random_ltd.remove(model) first to change them")
        return handle

    def _rows(self, batch: Any) -> int:
        try:
            return batch_rows(batch)
        except ConfigError:
            return self.batch_size

    def _base_seed(self) -> int:
        return self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _build_driver(self, trainer: pl.Trainer) -> None:
        global_batch = self.batch_size * trainer.accumulate_grad_batches * trainer.world_size
        schedule = self._bound_schedule(trainer, global_batch)
        self.lr_scheduler = self._make_lr_scheduler(trainer, schedule, global_batch) if self.layer_token_lr else None
        self.driver = Driver(self.handle, schedule, batch_size=global_batch, seq_len=schedule.seq_len,
                             lr_scheduler=self.lr_scheduler)
        if self._saved:
            self._resume(self._saved)
            self._saved = None

    def _bound_schedule(self, trainer: pl.Trainer, global_batch: int) -> Any:
        schedule = self.schedule
        if not hasattr(schedule, "resolve"):
            return schedule
        needs_steps = getattr(schedule, "total_steps", 0) is None
        if needs_steps and (trainer.max_steps is None or trainer.max_steps < 0):
            raise ConfigError("schedule", "a schedule with a fractional full_at needs Trainer(max_steps=...)")
        return schedule.resolve(
            total_steps=trainer.max_steps if needs_steps else None,
            tokens_per_step=(global_batch * schedule.seq_len
                             if getattr(schedule, "tokens_per_step", 0) is None else None))

    def _make_lr_scheduler(self, trainer: pl.Trainer, schedule: Any, global_batch: int) -> LayerTokenLR:
        if trainer.lr_scheduler_configs:
            raise ConfigError("layer_token_lr", "configure_optimizers already returns an LR scheduler; return only "
                              "the optimizer when the callback provides the LayerToken LR")
        if len(trainer.optimizers) != 1:
            raise ConfigError("layer_token_lr",
                              f"needs exactly one optimizer, the module has {len(trainer.optimizers)}")
        settings = dict(self.layer_token_lr) if isinstance(self.layer_token_lr, Mapping) else {}
        if "total_layer_tokens" not in settings:
            if trainer.max_steps is None or trainer.max_steps < 0:
                raise ConfigError("layer_token_lr", "needs Trainer(max_steps=...) or a total_layer_tokens setting")
            settings["total_layer_tokens"] = total_layer_tokens(
                schedule, trainer.max_steps, batch_size=global_batch, num_layers=self.handle.num_layers,
                drop_layers=self.handle.drop_layers)
        return LayerTokenLR(trainer.optimizers[0], **settings)

    def _resume(self, saved: dict) -> None:
        load_rank_state(self.driver, {**saved["driver"], "schedule": self.driver.schedule.state_dict()
                                      if self.driver.schedule is not None else None})
        if self.lr_scheduler is not None:  # the optimizer was restored with the LR of the step before the save
            groups = self.lr_scheduler.optimizer.param_groups
            for group, lr in zip(groups, self.lr_scheduler.get_last_lr(), strict=True):
                group["lr"] = lr


def batch_rows(batch: Any) -> int:
    """Sequences in a micro-batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else []
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise ConfigError("batch_size", f"cannot read the batch size from a {type(batch).__name__}: "
                      "pass RandomLTDCallback(batch_size=...)")
