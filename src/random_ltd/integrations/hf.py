"""Random-LTD inside the Hugging Face ``Trainer``: ``RandomLTDCallback`` and ``RandomLTDTrainer``.

    trainer = RandomLTDTrainer(model, args, train_dataset=data, callbacks=[
        RandomLTDCallback(random_ltd.MSLG(seq_len=512, start=128, increment=16, full_at=0.7))])

The callback translates the Trainer's events (docs/integrations.md): ``on_train_begin`` applies
random-LTD once and builds the run from ``args``; ``on_step_begin`` sets the kept length of
``state.global_step``; ``on_step_end`` counts it; its state is saved in ``trainer_state.json``.
``RandomLTDTrainerMixin`` overrides ``log`` (metrics in every training log, before any callback)
and ``create_scheduler`` (the ``LayerTokenLR``), the two things a callback cannot do.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from random_ltd.driver import Driver
from random_ltd.errors import ConfigError, RandomLTDError
from random_ltd.integrations.common import check_seed, engine_metrics
from random_ltd.integrations.distributed import apply_on_rank, resume_rank_state
from random_ltd.layer_selection import LayerSelection
from random_ltd.lr import LayerTokenLR, check_layer_token_lr
from random_ltd.run import Run, check_schedule

TRAINER_DECAYS = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}
BUILT_HERE = "_random_ltd_built"  # marks the LayerTokenLR that create_scheduler built (rebuilt on a new call)


class RandomLTDCallback(TrainerCallback, ExportableState):
    """``schedule``: a kept-length schedule (or its ``state_dict``); ``full_at`` fractions resolve
    against ``max_steps``, ``every_tokens`` against the global batch. ``layer_token_lr``: ``True``
    (the Trainer's LR shape over layer-tokens) or a dict of ``LayerTokenLR`` settings. ``seed``:
    default ``args.seed``, one per rank. ``layers``, ``stack``, ``keep_prefix_tokens``: as ``apply``'s."""

    def __init__(self, schedule: Any, layers: LayerSelection = "1:-1", *, layer_token_lr: bool | Mapping = False,
                 seed: int | None = None, stack: str | None = None, keep_prefix_tokens: bool = False):
        self.schedule = check_schedule(schedule)
        self.layers = layers if isinstance(layers, str) else [int(i) for i in layers]
        self.layer_token_lr, self.seed = check_layer_token_lr(layer_token_lr), check_seed(seed)
        self.stack, self.keep_prefix_tokens = stack, bool(keep_prefix_tokens)
        self.handle, self.driver = None, None
        self.restored_state: dict | None = None  # set by the Trainer when it rebuilds callbacks from a checkpoint
        self._warned_unlogged = False

    def on_train_begin(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        run = self.build_run(model, args, state.max_steps)
        self.driver = Driver(self.handle, run.schedule, batch_size=run.batch_size, seq_len=run.seq_len)
        if state.global_step > 0:
            self._resume(state)
        if self.layer_token_lr and not isinstance(lr_scheduler, LayerTokenLR):
            raise ConfigError("layer_token_lr", f"the Trainer already has an LR scheduler "
                              f"({type(lr_scheduler).__name__}): train with RandomLTDTrainer (or a Trainer with "
                              "RandomLTDTrainerMixin), pass RandomLTDCallback in callbacks=[...] and no scheduler")

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        kept = self._driver().before_step(state.global_step)
        if isinstance(lr_scheduler, LayerTokenLR):  # the Trainer calls its step() without arguments
            lr_scheduler.layer_tokens_per_step = self.driver.run.layer_tokens(kept)

    def on_step_end(self, args, state, control, **kwargs):
        self._driver().after_step()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not is_training_log(logs) or self.metrics().keys() <= logs.keys():
            return  # RandomLTDTrainerMixin.log added them before anyone saw the log
        if not self._warned_unlogged:
            warnings.warn("random_ltd/* metrics reach only the callbacks after RandomLTDCallback and not the "
                          "Trainer's log_history: train with RandomLTDTrainer (or RandomLTDTrainerMixin)", stacklevel=2)
            self._warned_unlogged = True
        self.add_metrics(logs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.handle is not None:
            self.handle.set_keep(None)  # after training the model is a plain transformer again

    def build_run(self, model: Any, args: Any, max_steps: int) -> Run:
        """The run's numbers from the Trainer's, applying random-LTD to ``model`` first if needed."""
        base_seed = self.seed if self.seed is not None else args.seed
        self.handle = handle = apply_on_rank(model, self.layers, base_seed=base_seed, rank=args.process_index,
                                             stack=self.stack, keep_prefix_tokens=self.keep_prefix_tokens)
        return Run.build(self.schedule, batch_size=args.train_batch_size * args.gradient_accumulation_steps
                         * args.world_size, num_layers=handle.num_layers, drop_layers=handle.drop_layers,
                         total_steps=max_steps)

    def metrics(self) -> dict[str, float]:
        return engine_metrics(self.driver)

    def add_metrics(self, logs: dict) -> None:
        if is_training_log(logs):
            logs.update(self.metrics())

    def build_lr_scheduler(self, trainer: Trainer, num_training_steps: int, optimizer: Any) -> LayerTokenLR:
        args = trainer.args
        decay = TRAINER_DECAYS.get(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
        if decay is None:
            raise ConfigError("layer_token_lr", f"lr_scheduler_type={args.lr_scheduler_type!r} has no layer-token "
                              "equivalent; give layer_token_lr={'decay': 'linear' | 'cosine' | 'constant'}")
        run = self.build_run(trainer.model, args, num_training_steps)
        scheduler = LayerTokenLR(optimizer, **run.lr_settings(
            self.layer_token_lr, warmup_steps=args.get_warmup_steps(num_training_steps), decay=decay))
        setattr(scheduler, BUILT_HERE, True)
        return scheduler

    def _resume(self, state: Any) -> None:
        entry = (state.stateful_callbacks or {}).get(type(self).__name__)
        entry = entry[0] if isinstance(entry, list) and entry else entry
        saved = self.restored_state or (entry or {}).get("attributes", {}).get("restored_state")
        self.restored_state = None
        if saved is None or saved.get("step") != state.global_step:
            warnings.warn(f"no random-LTD state for step {state.global_step} in the checkpoint: counters recomputed "
                          "from the schedule; the index stream restarts", stacklevel=2)
            self.driver.restart_at(state.global_step)
        else:  # the schedule given today wins over the saved one
            resume_rank_state(self.driver, saved)

    def _driver(self) -> Driver:
        if self.driver is None:
            raise RandomLTDError("RandomLTDCallback received a step before on_train_begin")
        return self.driver

    def state(self) -> dict:  # ExportableState: saved in trainer_state.json with each checkpoint
        return {"args": {"schedule": self.schedule.state_dict() if hasattr(self.schedule, "state_dict") else None,
                         "layers": self.layers, "layer_token_lr": self.layer_token_lr, "seed": self.seed,
                         "stack": self.stack, "keep_prefix_tokens": self.keep_prefix_tokens},
                "attributes": {"restored_state": self.driver.state_dict() if self.driver else self.restored_state}}


def is_training_log(logs: Mapping) -> bool:
    """A periodic training log or the final summary (not an evaluation's)."""
    return "loss" in logs or "train_loss" in logs


def find_callback(trainer: Trainer) -> RandomLTDCallback | None:
    """The trainer's current callback (the Trainer may have rebuilt it from a checkpoint)."""
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, RandomLTDCallback)), None)


class RandomLTDTrainerMixin:
    """Mix into a ``Trainer`` class (``class T(RandomLTDTrainerMixin, Trainer)``); inert without our callback."""

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        callback = find_callback(self)
        if callback is not None:
            callback.add_metrics(logs)
        super().log(logs, *args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        callback, current = find_callback(self), self.lr_scheduler
        if callback is not None and callback.layer_token_lr and getattr(current, BUILT_HERE, current is None):
            self.lr_scheduler = callback.build_lr_scheduler(self, num_training_steps, optimizer or self.optimizer)
        return super().create_scheduler(num_training_steps, optimizer)


class RandomLTDTrainer(RandomLTDTrainerMixin, Trainer):
    """``transformers.Trainer`` with random-LTD's metrics in every log and the LayerToken LR."""
