"""Read DeepSpeed's random-LTD configuration (``data_efficiency.data_routing.random_ltd``).

DeepSpeed's ``fixed_linear`` schedule (documented behaviour, restated): at global step t
(from 0), with R = ``require_steps`` and q = ``seq_per_step``,

    n = floor(t / R * (max_value - min_value) + min_value)     # float arithmetic
    n = n - n % q
    kept = min(n, max_value)

Two defects follow from the formula:

- if ``min_value`` is not a multiple of q, the rounding puts the kept length *below*
  ``min_value`` until the first increment (e.g. min 100, q 16 -> 96 at step 0);
- if ``max_value`` is not a multiple of q, it stays at the multiple below ``max_value`` past
  ``require_steps`` and reaches ``max_value`` late (when the unrounded value passes the next
  multiple of q).

``DeepSpeedLinear`` reproduces the formula step for step, float arithmetic included (which lands
a boundary one step late now and then compared with exact arithmetic). By default
(``exact=False``) it repairs the two defects: the kept length is clamped to at least
``min_value`` and is ``max_value`` from step R on; a warning says what changed. For
well-formed configs (both bounds multiples of q) the two modes are identical.
``exact=True`` replays DeepSpeed unchanged, to continue or reproduce a DeepSpeed run.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

from random_ltd.errors import ConfigError
from random_ltd.schedules import check_int, check_step, first_full_step


class DeepSpeedLinear:
    """DeepSpeed's ``fixed_linear`` kept-length schedule; ``seq_len`` is ``max_value``."""

    def __init__(self, min_value: int, max_value: int, seq_per_step: int, require_steps: int, exact: bool = False):
        self._configure(min_value, max_value, seq_per_step, require_steps, exact)

    def _configure(self, min_value, max_value, seq_per_step, require_steps, exact) -> None:
        self.start = check_int("min_value", min_value)
        self.seq_len = check_int("max_value", max_value)
        if self.start > self.seq_len:
            raise ConfigError("min_value", f"{self.start} is larger than max_value={self.seq_len}")
        self.increment = check_int("seq_per_step", seq_per_step)
        self.require_steps = check_int("require_steps", require_steps)
        self.exact = bool(exact)
        if self.exact and self.start < self.increment:
            raise ConfigError("min_value", f"{self.start} < seq_per_step={self.increment}: DeepSpeed's formula "
                              "would keep 0 tokens at step 0; use exact=False")

    def deepspeed_value(self, step: int) -> int:
        """The kept length DeepSpeed computes at ``step``, defects included."""
        span = self.seq_len - self.start
        grown = math.floor(float(step) / self.require_steps * span + self.start)
        return min(grown - grown % self.increment, self.seq_len)

    def __call__(self, step: int) -> int:
        value = self.deepspeed_value(check_step(step))
        if self.exact:
            return value
        if step >= self.require_steps:
            return self.seq_len
        return max(self.start, value)

    def _search_upper(self) -> int:
        span = max(1, self.seq_len - self.start)
        return self.require_steps * (span + self.increment) // span + 1

    @property
    def full_step(self) -> int:
        return first_full_step(self, self.seq_len, self._search_upper())

    def resolve(self, **_: Any) -> DeepSpeedLinear:
        return self

    def defects(self) -> list[str]:
        """What DeepSpeed's formula does wrong for this config (empty when well-formed)."""
        found = []
        if self.deepspeed_value(0) < self.start:
            found.append(f"DeepSpeed starts at {self.deepspeed_value(0)}, below min_value={self.start}")
        late = first_full_step(self.deepspeed_value, self.seq_len, self._search_upper())
        if late > self.require_steps:
            found.append(f"DeepSpeed reaches max_value={self.seq_len} only at step {late}, "
                         f"not at require_steps={self.require_steps}")
        return found

    def state_dict(self) -> dict:
        return {"type": "DeepSpeedLinear", "min_value": self.start, "max_value": self.seq_len,
                "seq_per_step": self.increment, "require_steps": self.require_steps, "exact": self.exact}

    def load_state_dict(self, state: dict) -> None:
        if state.get("type") != "DeepSpeedLinear":
            raise ConfigError("state_dict", f"holds a {state.get('type')!r} schedule, not 'DeepSpeedLinear'")
        self._configure(state["min_value"], state["max_value"], state["seq_per_step"], state["require_steps"],
                        state["exact"])

    def __repr__(self) -> str:
        return (f"DeepSpeedLinear(min_value={self.start}, max_value={self.seq_len}, seq_per_step={self.increment}, "
                f"require_steps={self.require_steps}, exact={self.exact})")


@dataclasses.dataclass
class DeepSpeedRandomLTD:
    """What ``from_deepspeed_config`` read: the schedule, the dropping layers and the stack size."""

    schedule: DeepSpeedLinear
    layer_ids: list[int]
    num_layers: int
    batch_size: int | None = None
    layer_token_lr: dict | None = None

    @property
    def seq_len(self) -> int:
        return self.schedule.seq_len


def from_deepspeed_config(config: Mapping | str | os.PathLike, *, exact: bool = False) -> DeepSpeedRandomLTD:
    """Read a DeepSpeed config: a dict or a JSON file, the whole config or its ``random_ltd`` section.

    ``exact=True`` replays DeepSpeed's formula unchanged (see the module docstring for its defects
    and what the default does instead). Unknown ``schedule_type``, missing keys and inconsistent
    layer counts raise ``ConfigError`` naming the key.
    """
    whole = _load(config)
    section = _random_ltd_section(whole)
    if section.get("enabled") is False:
        warnings.warn("random_ltd.enabled is false in this DeepSpeed config: DeepSpeed would not drop tokens",
                      stacklevel=2)
    num_layers = check_int("total_layer_num", _require(section, "total_layer_num"))
    layer_ids = _layer_ids(section, num_layers)
    schedule = _schedule(_require(section, "random_ltd_schedule"), exact)
    if not exact:
        for defect in schedule.defects():
            warnings.warn(f"{defect}; random-ltd keeps the kept length within [min_value, max_value] and reaches "
                          "max_value at require_steps (exact=True replays DeepSpeed)", stacklevel=2)
    batch_size = section.get("global_batch_size", whole.get("train_batch_size"))
    lr = section.get("layer_token_lr_schedule")
    return DeepSpeedRandomLTD(
        schedule=schedule, layer_ids=layer_ids, num_layers=num_layers,
        batch_size=check_int("train_batch_size", batch_size, optional=True),
        layer_token_lr=dict(lr) if lr and lr.get("enabled") else None,
    )


def _load(config: Mapping | str | os.PathLike) -> Mapping:
    if isinstance(config, Mapping):
        return config
    try:
        with open(config, encoding="utf-8") as file:
            loaded = json.load(file)
    except OSError as error:
        raise ConfigError("deepspeed_config", f"cannot read {os.fspath(config)!r}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError("deepspeed_config", f"{os.fspath(config)!r} is not valid JSON: {error}") from None
    if not isinstance(loaded, Mapping):
        raise ConfigError("deepspeed_config", f"{os.fspath(config)!r} does not hold a JSON object")
    return loaded


def _random_ltd_section(config: Mapping) -> Mapping:
    if "data_efficiency" in config:
        path = ("data_efficiency", "data_routing", "random_ltd")
        for depth, key in enumerate(path):
            if not isinstance(config, Mapping) or key not in config:
                raise ConfigError(".".join(path[: depth + 1]), "missing from the DeepSpeed config")
            config = config[key]
        return config
    if "random_ltd" in config:
        return config["random_ltd"]
    if "random_ltd_schedule" in config:
        return config
    raise ConfigError("random_ltd", "no data_efficiency.data_routing.random_ltd section in this config")


def _require(section: Mapping, key: str) -> Any:
    if key not in section:
        raise ConfigError(key, "missing from the random_ltd section")
    return section[key]


def _layer_ids(section: Mapping, num_layers: int) -> list[int]:
    ids = _require(section, "random_ltd_layer_id")
    if not isinstance(ids, list) or not ids:
        raise ConfigError("random_ltd_layer_id", f"must be a non-empty list of layer indices, got {ids!r}")
    ids = [check_int("random_ltd_layer_id", i, minimum=0) for i in ids]
    count = check_int("random_ltd_layer_num", _require(section, "random_ltd_layer_num"), minimum=0)
    if count != len(ids):
        raise ConfigError("random_ltd_layer_num", f"{count} but random_ltd_layer_id lists {len(ids)} layers")
    if len(set(ids)) != len(ids) or max(ids) >= num_layers:
        raise ConfigError("random_ltd_layer_id", f"{ids} must be distinct indices below total_layer_num={num_layers}")
    return sorted(ids)


def _schedule(schedule: Mapping, exact: bool) -> DeepSpeedLinear:
    kind = _require(schedule, "schedule_type")
    if kind != "fixed_linear":
        raise ConfigError("schedule_type", f"{kind!r} is not supported (DeepSpeed's random-LTD has 'fixed_linear')")
    settings = _require(schedule, "schedule_config")
    return DeepSpeedLinear(
        min_value=_require(schedule, "min_value"),
        max_value=_require(schedule, "max_value"),
        seq_per_step=_require(settings, "seq_per_step"),
        require_steps=_require(settings, "require_steps"),
        exact=exact,
    )
