"""``Driver``: random-LTD in a custom training loop, in three lines.

    driver = random_ltd.Driver(handle, schedule, batch_size=B, seq_len=S, lr_scheduler=lr)
    for step, batch in enumerate(data):
        driver.before_step(step)      # sets the kept length of this step on the model
        loss = model(batch).loss; loss.backward(); optimizer.step(); optimizer.zero_grad()
        driver.after_step()           # counts layer-tokens, steps the LR by them

The step is the caller's (an engine's global step): the kept length is a pure function of it.
The run's numbers (schedule binding, kept lengths, layer-tokens) come from ``random_ltd.run.Run``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from random_ltd.errors import ConfigError, RandomLTDError
from random_ltd.lr import LayerTokenLR
from random_ltd.run import Run
from random_ltd.schedules import KeptLengthSchedule, check_int, check_step


class Driver:
    """Advances the step and layer-token counters, sets the kept length, steps the LR.

    ``handle`` is what ``random_ltd.apply`` returned, or ``None`` for the baseline arm: then
    nothing is dropped (the schedule, if any, is not applied) but layer-tokens are still
    counted and the LR still follows them, so both arms of a comparison share one loop.
    ``schedule=None`` also means no dropping. A schedule that grows every N tokens and has no
    ``tokens_per_step`` gets ``batch_size * seq_len`` (under data parallelism pass the global
    batch size); ``driver.run`` holds these numbers (``random_ltd.run.Run``). ``num_layers`` /
    ``drop_layers`` default to the handle's and are needed without one (then only informative).
    ``lr_scheduler``: a ``LayerTokenLR`` is stepped by the layer-tokens of each step; any other
    ``torch.optim.lr_scheduler`` is stepped once per step (iteration-based).
    """

    def __init__(self, handle: Any, schedule: KeptLengthSchedule | None, *, batch_size: int, seq_len: int,
                 lr_scheduler: Any = None, num_layers: int | None = None, drop_layers: list[int] | None = None):
        self.handle = handle
        self.batch_size = check_int("batch_size", batch_size)
        self.seq_len = check_int("seq_len", seq_len)
        self.num_layers, self.drop_layers = self._layers(handle, num_layers, drop_layers)
        bound = Run.build(schedule, seq_len=self.seq_len, batch_size=self.batch_size, num_layers=self.num_layers,
                          drop_layers=self.drop_layers)
        self.schedule = bound.schedule  # kept in the state even for a baseline arm, which does not apply it
        self.run = bound if handle is not None else dataclasses.replace(bound, schedule=None)
        self.lr_scheduler = lr_scheduler
        self._step = 0
        self.layer_tokens = 0
        self.tokens = 0
        self.kept: int | None = None
        self._in_step = False

    @staticmethod
    def _layers(handle: Any, num_layers: int | None, drop_layers: list[int] | None) -> tuple[int, list[int]]:
        if handle is not None:
            for name, given, actual in (("num_layers", num_layers, handle.num_layers),
                                        ("drop_layers", drop_layers, list(handle.drop_layers))):
                if given is not None and given != actual:
                    raise ConfigError(name, f"{given!r} differs from the handle's {actual!r}")
            return handle.num_layers, list(handle.drop_layers)
        if num_layers is None:
            raise ConfigError("num_layers", "is needed when there is no handle (baseline arm)")
        return num_layers, list(drop_layers or [])  # validated by Run.build

    @property
    def dropping(self) -> bool:
        return self.run.dropping

    @property
    def step(self) -> int:
        """The step of the open step, or of the next one (read-only: pass the step to ``before_step``)."""
        return self._step

    def before_step(self, step: int | None = None) -> int:
        """Set the kept length of ``step`` (default: the step after the last one) on the handle and
        return it (``seq_len``: nothing dropped)."""
        if step is not None:
            self._step = check_step(step)
        kept = self.run.kept(self._step)
        if self.handle is not None:
            self.handle.set_keep(self.run.keep(self._step))
        self.kept = kept
        self._in_step = True
        return kept

    def after_step(self, batch_size: int | None = None) -> int:
        """Count this step's layer-tokens (``batch_size`` overrides a short last batch), step the
        LR by them, advance the step. Returns the layer-tokens of the step."""
        if not self._in_step:
            raise RandomLTDError("Driver.after_step() called without before_step() for this step")
        batch_size = self.batch_size if batch_size is None else check_int("batch_size", batch_size)
        step_tokens = self.run.layer_tokens(self.kept, batch_size)
        self.layer_tokens += step_tokens
        self.tokens += batch_size * self.seq_len
        if isinstance(self.lr_scheduler, LayerTokenLR):
            self.lr_scheduler.step(step_tokens)
        elif self.lr_scheduler is not None:
            self.lr_scheduler.step()  # an iteration-based torch scheduler (the paper's ablation)
        self._step += 1
        self._in_step = False
        return step_tokens

    def restart_at(self, step: int) -> None:
        """Counters of a run that took steps 0 .. step - 1 by the schedule (when no saved state is at hand)."""
        if self._in_step:
            raise RandomLTDError("Driver.restart_at() in the middle of a step (between before_step and after_step)")
        self._step = check_step(step)
        self.layer_tokens = self.run.layer_tokens_before(step)
        self.tokens = step * self.batch_size * self.seq_len

    def metrics(self) -> dict[str, float]:
        """Namespaced values to log: kept length, layer-tokens so far, LR (with an LR scheduler)."""
        values: dict[str, float] = {
            "random_ltd/kept_len": self.kept if self.kept is not None else self._next_kept(),
            "random_ltd/layer_tokens": self.layer_tokens,
            "random_ltd/tokens": self.tokens,
            "random_ltd/step": self.step,
        }
        if self.lr_scheduler is not None:
            values["random_ltd/lr"] = float(self.lr_scheduler.get_last_lr()[0])
        return values

    def _next_kept(self) -> int:
        return self.run.kept(self._step)

    def state_dict(self) -> dict:
        """Counters plus the schedule's, the LR scheduler's and the handle's state (one object to save).

        Save torch's RNG state beside it (training frameworks do): random-LTD draws from that
        stream, so a run resumed with both draws the same tokens as the uninterrupted run.
        """
        return {
            "step": self.step, "layer_tokens": self.layer_tokens, "tokens": self.tokens, "kept": self.kept,
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "lr_scheduler": None if self.lr_scheduler is None else self.lr_scheduler.state_dict(),
            "handle": None if self.handle is None else self.handle.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if self._in_step:
            raise RandomLTDError("Driver.load_state_dict() in the middle of a step "
                                 "(between before_step and after_step)")
        self._step = check_int("step", state["step"], minimum=0)
        self.layer_tokens = check_int("layer_tokens", state["layer_tokens"], minimum=0)
        self.tokens = check_int("tokens", state["tokens"], minimum=0)
        self.kept = state["kept"]
        for name in ("schedule", "lr_scheduler", "handle"):
            target, saved = getattr(self, name), state.get(name)
            if (target is None) != (saved is None):
                raise ConfigError(name, "the saved driver state and this driver disagree on whether there is one")
            if target is not None:
                target.load_state_dict(saved)


def rng_state() -> dict[str, Any]:
    """Torch's RNG state (CPU, and CUDA once initialised): save it beside ``Driver.state_dict()``."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what ``rng_state()`` saved: random-LTD's draws continue as in the uninterrupted run."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
