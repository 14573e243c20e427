"""Random-LTD inside the Hugging Face ``Trainer``: ``RandomLTDCallback`` and ``RandomLTDTrainer``.

    trainer = RandomLTDTrainer(model, args, train_dataset=data,
                               callbacks=[RandomLTDCallback(random_ltd.MSLG(seq_len=512, start=128, increment=16,
                                                                            full_at=0.7))])

The callback does the work, event by event (docs/integrations.md has the details):

- ``on_train_begin``: applies random-LTD to the Trainer's model, once: a model that already
  carries a handle (a second Trainer) keeps it. Each rank's seed is
  ``rank_seed(seed or args.seed, args.process_index)``.
- ``on_step_begin`` (once per optimizer step, however many micro-batches are accumulated): sets
  the kept length ``schedule(state.global_step)``; ``on_step_end`` counts the step's layer-tokens.
- Checkpoints: the callback is an ``ExportableState``; its counters and the index stream are
  saved in ``trainer_state.json`` and restored by ``resume_from_checkpoint``.
- Evaluation runs the model in eval mode, which never drops.

Two things a callback cannot do are done by ``RandomLTDTrainerMixin`` through the methods
transformers documents for subclassing: ``log`` adds ``random_ltd/kept_len``,
``random_ltd/layer_tokens`` and ``random_ltd/tokens`` to every training log before the Trainer
records it and before any callback runs (so ``state.log_history`` and every logging integration
see them whatever the callback order), and ``create_scheduler`` builds a ``LayerTokenLR`` when
the callback asks for ``layer_token_lr``. ``RandomLTDTrainer`` is ``Trainer`` with the mixin;
mix it into your own Trainer subclass the same way.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

import random_ltd
from random_ltd.accounting import layer_tokens_per_step, total_layer_tokens
from random_ltd.deepspeed_config import DeepSpeedLinear
from random_ltd.driver import Driver
from random_ltd.errors import ConfigError
from random_ltd.integrations.distributed import load_rank_state, rank_seed
from random_ltd.layer_selection import LayerSelection, parse_layer_selection
from random_ltd.lr import LayerTokenLR, check_layer_token_lr
from random_ltd.schedules import MSLG, ConstantKeep

SCHEDULE_TYPES = {cls.__name__: cls for cls in (MSLG, ConstantKeep, DeepSpeedLinear)}
TRAINER_DECAYS = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}
BUILT_HERE = "_random_ltd_built"  # marks the LayerTokenLR that create_scheduler built (rebuilt on a new call)


class RandomLTDCallback(TrainerCallback, ExportableState):
    """Apply random-LTD to a ``Trainer``'s model and drive its kept length from the Trainer's step.

    Args:
        schedule: the kept-length schedule (``random_ltd.MSLG``, ``ConstantKeep``, or one read by
            ``random_ltd.from_deepspeed_config(...).schedule``), a function of the optimizer
            step. A fraction ``full_at`` is resolved against the Trainer's ``max_steps`` and
            ``every_tokens`` against its global batch (per-device batch x accumulation x ranks).
        layers: which layers drop tokens (as ``random_ltd.apply``); default all but first and last.
        layer_token_lr: ``True`` to replace the Trainer's LR scheduler by a ``LayerTokenLR`` with
            the same shape (``lr_scheduler_type`` linear/cosine/constant, warmup of
            ``warmup_steps`` converted to layer-tokens, decay over the run's planned
            layer-tokens); a dict overrides any of ``total_layer_tokens``,
            ``warmup_layer_tokens``, ``decay``, ``min_lr_ratio``. ``False``: the Trainer's own
            iteration-based scheduler (the paper's ablation, Section 5.5).
        seed: base seed of the index draws (default: the Trainer's ``args.seed``); each rank
            derives its own from it.
        stack, keep_prefix_tokens: as in ``random_ltd.apply``.
    """

    def __init__(self, schedule: Any, layers: LayerSelection = "1:-1", *, layer_token_lr: bool | Mapping = False,
                 seed: int | None = None, stack: str | None = None, keep_prefix_tokens: bool = False):
        self.schedule = _check_schedule(schedule)
        self.layers = layers if isinstance(layers, str) else [int(i) for i in layers]
        self.layer_token_lr = check_layer_token_lr(layer_token_lr)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError("seed", f"must be an integer >= 0 or None, got {seed!r}")
        self.seed, self.stack, self.keep_prefix_tokens = seed, stack, bool(keep_prefix_tokens)
        self.driver: Driver | None = None
        self.restored_state: dict | None = None  # set by the Trainer when it rebuilds callbacks from a checkpoint
        self._warned_unlogged = False

    # ---- Trainer events ----
    def on_train_begin(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        handle = self.ensure_applied(model, args)
        schedule = self._bound_schedule(args, state.max_steps)
        self.driver = Driver(handle, schedule, batch_size=global_batch_size(args), seq_len=schedule.seq_len)
        if state.global_step > 0:
            self._resume(state)
        if self.layer_token_lr and not isinstance(lr_scheduler, LayerTokenLR):
            raise ConfigError("layer_token_lr",
                              f"the Trainer already has an LR scheduler ({type(lr_scheduler).__name__}): "
                              "train with RandomLTDTrainer (or a Trainer with RandomLTDTrainerMixin), pass "
                              "RandomLTDCallback in callbacks=[...] and no scheduler in optimizers=")

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        driver = self._require_driver()
        kept = driver.before_step(state.global_step)  # the Trainer's clock rules (resume, skipped batches)
        if isinstance(lr_scheduler, LayerTokenLR):  # the Trainer calls its step() without arguments
            lr_scheduler.layer_tokens_per_step = layer_tokens_per_step(
                driver.seq_len, driver.batch_size, driver.num_layers,
                driver.drop_layers if driver.dropping else [], kept)

    def on_step_end(self, args, state, control, **kwargs):
        self._require_driver().after_step()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not is_training_log(logs) or self.metrics().keys() <= logs.keys():
            return  # RandomLTDTrainerMixin.log added them before anyone saw the log
        if not self._warned_unlogged:
            warnings.warn("random_ltd/* metrics reach only the callbacks after RandomLTDCallback and not the "
                          "Trainer's log_history: train with RandomLTDTrainer (or RandomLTDTrainerMixin)", stacklevel=2)
            self._warned_unlogged = True
        self.add_metrics(logs)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.driver is not None and self.driver.handle is not None:
            self.driver.handle.set_keep(None)  # after training the model is a plain transformer again

    # ---- pieces ----
    def ensure_applied(self, model: Any, args: Any) -> random_ltd.RandomLTDHandle:
        """The model's handle, applying random-LTD first if it has none (never twice)."""
        handle = random_ltd.get_handle(model)
        if handle is None:
            seed = rank_seed(self.seed if self.seed is not None else args.seed, args.process_index)
            return random_ltd.apply(model, self.layers, seed=seed, stack=self.stack,
                                    keep_prefix_tokens=self.keep_prefix_tokens)
        wanted = parse_layer_selection(self.layers, handle.num_layers)
        if wanted != handle.drop_layers:
            raise ConfigError("layers", f"random-LTD is already applied to this model on layers {handle.drop_layers}, "
                              f"not {wanted}; random_ltd.remove(model) first to change them")
        return handle

    def metrics(self) -> dict[str, float]:
        if self.driver is None:
            return {}
        values = self.driver.metrics()
        values.pop("random_ltd/step", None)  # the Trainer logs its step
        return values

    def add_metrics(self, logs: dict) -> None:
        """Add the metrics to a training log (the periodic one or the final summary)."""
        if is_training_log(logs):
            logs.update(self.metrics())

    def build_lr_scheduler(self, trainer: Trainer, num_training_steps: int, optimizer: Any) -> LayerTokenLR:
        """The ``LayerTokenLR`` that replaces the Trainer's scheduler (see ``layer_token_lr``)."""
        args = trainer.args
        handle = self.ensure_applied(trainer.model, args)
        schedule = self._bound_schedule(args, num_training_steps)
        count = dict(batch_size=global_batch_size(args), num_layers=handle.num_layers, drop_layers=handle.drop_layers)
        warmup_steps = args.get_warmup_steps(num_training_steps)
        settings = dict(self.layer_token_lr) if isinstance(self.layer_token_lr, Mapping) else {}
        settings.setdefault("total_layer_tokens", total_layer_tokens(schedule, num_training_steps, **count))
        settings.setdefault("warmup_layer_tokens",
                            total_layer_tokens(schedule, warmup_steps, **count) if warmup_steps else 0)
        settings.setdefault("decay", _trainer_decay(args.lr_scheduler_type))
        scheduler = LayerTokenLR(optimizer, **settings)
        setattr(scheduler, BUILT_HERE, True)
        return scheduler

    def _bound_schedule(self, args: Any, max_steps: int) -> Any:
        """The schedule with the run's length and tokens per step filled in where it needs them."""
        schedule = self.schedule
        if not hasattr(schedule, "resolve"):
            return schedule
        tokens_per_step = global_batch_size(args) * schedule.seq_len
        return schedule.resolve(
            total_steps=max_steps if getattr(schedule, "total_steps", 0) is None else None,
            tokens_per_step=tokens_per_step if getattr(schedule, "tokens_per_step", 0) is None else None,
        )

    def _resume(self, state: Any) -> None:
        driver = self.driver
        saved = self.restored_state or _saved_state(state, type(self).__name__)
        self.restored_state = None
        if saved is None or saved.get("step") != state.global_step:
            warnings.warn(f"no random-LTD state for step {state.global_step} in the checkpoint: counters recomputed "
                          "from the schedule; the index stream restarts", stacklevel=2)
            driver.restart_at(state.global_step)
            return
        current_schedule = driver.schedule.state_dict() if driver.schedule else None  # today's settings win
        load_rank_state(driver, {**saved, "schedule": current_schedule})

    def _require_driver(self) -> Driver:
        if self.driver is None:
            raise random_ltd.RandomLTDError("RandomLTDCallback received a step before on_train_begin")
        return self.driver

    # ---- ExportableState: saved in trainer_state.json with each checkpoint ----
    def state(self) -> dict:
        schedule_state = self.schedule.state_dict() if hasattr(self.schedule, "state_dict") else None
        return {
            "args": {"schedule": schedule_state, "layers": self.layers, "layer_token_lr": self.layer_token_lr,
                     "seed": self.seed, "stack": self.stack, "keep_prefix_tokens": self.keep_prefix_tokens},
            "attributes": {"restored_state": self.driver.state_dict() if self.driver else self.restored_state},
        }


def global_batch_size(args: Any) -> int:
    """Sequences per optimizer step over all ranks: per-device batch x accumulation x world size."""
    return args.train_batch_size * args.gradient_accumulation_steps * args.world_size


def is_training_log(logs: Mapping) -> bool:
    """A periodic training log or the final summary (not an evaluation's)."""
    return "loss" in logs or "train_loss" in logs


def find_callback(trainer: Trainer) -> RandomLTDCallback | None:
    """The trainer's current callback (the Trainer may have rebuilt it from a checkpoint)."""
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, RandomLTDCallback)), None)


class RandomLTDTrainerMixin:
    """Mix into a ``transformers.Trainer`` class (before it: ``class T(RandomLTDTrainerMixin, Trainer)``).

    It overrides two methods transformers documents for subclassing, and does nothing unless the
    Trainer has a ``RandomLTDCallback`` among its callbacks (looked up at each call, so a callback
    added with ``add_callback`` or rebuilt from a checkpoint counts):

    - ``log``: the callback's metrics join every training log before the Trainer records it in
      ``state.log_history`` and before any callback (TensorBoard, W&B, ...) sees it;
    - ``create_scheduler``: with ``layer_token_lr`` the Trainer's scheduler is a ``LayerTokenLR``
      (unless you passed one in ``optimizers=``).
    """

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        callback = find_callback(self)
        if callback is not None:
            callback.add_metrics(logs)
        super().log(logs, *args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        callback = find_callback(self)
        current = self.lr_scheduler
        if (callback is not None and callback.layer_token_lr
                and (current is None or getattr(current, BUILT_HERE, False))):
            self.lr_scheduler = callback.build_lr_scheduler(self, num_training_steps, optimizer or self.optimizer)
        return super().create_scheduler(num_training_steps, optimizer)


class RandomLTDTrainer(RandomLTDTrainerMixin, Trainer):
    """``transformers.Trainer`` with random-LTD's metrics in every log and the LayerToken LR
    (``RandomLTDTrainerMixin``); train with a ``RandomLTDCallback`` in ``callbacks=[...]``."""


def _saved_state(state: Any, name: str) -> dict | None:
    entry = (state.stateful_callbacks or {}).get(name)
    if isinstance(entry, list):
        entry = entry[0] if entry else None
    return None if entry is None else entry.get("attributes", {}).get("restored_state")


def _check_schedule(schedule: Any) -> Any:
    if isinstance(schedule, Mapping):  # a state_dict, as stored in checkpoints
        kind = schedule.get("type")
        if kind not in SCHEDULE_TYPES:
            raise ConfigError("schedule", f"a saved schedule of type {kind!r} cannot be rebuilt; "
                                          f"known: {sorted(SCHEDULE_TYPES)}")
        return SCHEDULE_TYPES[kind](**{key: value for key, value in schedule.items() if key != "type"})
    if not callable(schedule) or not isinstance(getattr(schedule, "seq_len", None), int):
        raise ConfigError("schedule", f"must be a kept-length schedule (callable step -> kept, with seq_len), "
                          f"e.g. random_ltd.MSLG(...); got {schedule!r}")
    return schedule


def _trainer_decay(lr_scheduler_type: Any) -> str:
    name = getattr(lr_scheduler_type, "value", lr_scheduler_type)
    if name not in TRAINER_DECAYS:
        raise ConfigError("layer_token_lr", f"lr_scheduler_type={name!r} has no layer-token equivalent; "
                          "give layer_token_lr={'decay': 'linear' | 'cosine' | 'constant'}")
    return TRAINER_DECAYS[name]
