"""Which tokens a dropping layer keeps: the strategy interface, and random-LTD's uniform strategy.

A strategy (``Strategy``) has
- ``needs_context``: ``True`` when it reads the model's inputs. Then ``begin_forward(inputs, keep)``
  runs once at the start of each training forward, from one forward pre-hook on the model, with
  the model's forward arguments bound by name (``inputs["input_ids"]``); what it returns is the
  forward's *context*. Strategies without it do no context work at all.
- ``select(layer, tokens, keep, context)``: called by each dropping layer with its ``LayerInfo``,
  its batch-first hidden states ``(B, s, d)`` and the kept length; returns the kept positions
  ``(B, keep)`` sorted ascending, or ``None`` to run the layer on every token. ``context`` is the
  context of the forward this call belongs to (under gradient checkpointing, of the forward a
  replay replays: ``random_ltd.contexts``), ``None`` without ``needs_context``.
- ``state_dict()`` / ``load_state_dict(state)``: saved and restored with the handle's.
- ``routes``: ``True`` for a strategy whose kept subset spans several layers (``select`` then
  returns a ``random_ltd.routes.RouteStep``: start, continue or end a route).
- ``weighted``: ``True`` for a strategy that scales the kept tokens' residual branch (``select``
  then returns ``Weighted``; evaluation asks ``select_causal(layer, tokens)``: Mixture-of-Depths,
  ``random_ltd.mod``).

- ``UniformSelection``: random-LTD. Each layer draws its own uniform subset (``rng``), with
  optional protected tokens (positions, or positions holding given ids) chosen first.
- ``random_ltd.tokenbypass.TokenBypass``: importance top-k chosen once per forward from the input
  ids (its context), shared by every layer of its range.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from random_ltd import ops, rng
from random_ltd.errors import RandomLTDError


@dataclasses.dataclass
class LayerInfo:
    """What a strategy knows of the dropping layer calling it.

    ``position``: the layer's index in its stack (under pipeline parallelism, in the whole
    model's stack); ``name``: its module name in the model; ``stream``: the strategy's own name for
    the layer (``Strategy.stream``), e.g. a 0-d tensor, so that compiled layers do not specialise on
    a per-layer Python int (each dropping block of a class then shares one graph).
    """

    position: int
    name: str = ""
    stream: object = None  # what the strategy's stream(position) returned when the layer was wrapped


# A layer's ``__dict__`` entry, set by a weighted call: ``(B, k)`` bool, the slots whose tokens ran the layer
# (``None``: all), for hooks that read the layer's per-token work (the MoE router loss, ``adapters.moe``).
RAN_ATTR = "_random_ltd_ran"


@dataclasses.dataclass(frozen=True)
class Weighted:
    """``select``'s answer for a strategy with ``weighted = True`` (Mixture-of-Depths, ``random_ltd.mod``).

    ``indices`` ``(B, k)`` sorted ascending, ``weights`` ``(B, k)``: kept token ``x`` leaves the layer
    as ``x + w * (layer(x) - x)``; every other token leaves unchanged. ``k == 0`` skips the layer.
    ``valid`` ``(B, k)`` bool, or ``None`` (all): where sequences keep different numbers of tokens
    (causal routing), the slots past a sequence's own count are fillers, masked as keys and left
    unchanged.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    valid: torch.Tensor | None = None


class Strategy:
    """Base of selection strategies: no context, no state; ``select`` is the one method to write."""

    needs_context: bool = False
    routes: bool = False  # True: select returns random_ltd.routes.RouteStep (a span of layers), not indices
    weighted: bool = False  # True: select returns Weighted, also in evaluation (through select_causal)

    def begin_forward(self, inputs: Mapping[str, object], keep: int):
        """The context of one training forward, from the model's arguments (``needs_context`` only)."""
        return None

    def stream(self, position: int) -> object:
        """The layer at ``position``'s name for this strategy (``LayerInfo.stream``), made at wrap time."""
        return position

    def select(self, layer: LayerInfo, tokens: torch.Tensor, keep: int, context) -> torch.Tensor | None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class UniformSelection(Strategy):
    """Uniform random subsets, independent per layer, sequence and forward pass.

    ``protect_positions`` (negative counts from the end) and tokens whose id is in
    ``protect_ids`` are kept before any drawn token; when they outnumber ``keep``, a uniform
    subset of them is kept (they keep their drawn keys, raised above every unprotected one).
    ``protect_ids`` need the model's ``input_ids``: the context is where they hold a protected id.
    """

    def __init__(self, seed: int, protect_positions: Sequence[int] = (), protect_ids: Sequence[int] = ()):
        self._streams = rng.StreamWords(seed)
        self.protect_positions = tuple(protect_positions)
        self.protect_ids = tuple(sorted(set(protect_ids)))
        self._ids_by_device: dict[torch.device, torch.Tensor] = {}

    @property
    def seed(self) -> int:
        return self._streams.seed

    @seed.setter
    def seed(self, seed: int) -> None:
        self._streams.reseed(seed)  # the layers' stream tensors follow in place

    @property
    def needs_context(self) -> bool:
        return bool(self.protect_ids)

    def stream(self, position: int) -> torch.Tensor:
        """The layer at ``position``'s stream: a 0-d tensor that follows the seed (``rng.StreamWords``)."""
        return self._streams.word(position)

    def begin_forward(self, inputs: Mapping[str, object], keep: int) -> torch.Tensor:
        input_ids = inputs.get("input_ids")
        if not isinstance(input_ids, torch.Tensor):
            raise RandomLTDError("protect_ids finds protected tokens by id: call the model with input_ids")
        return self.ids_mask(input_ids)

    def select(self, layer: LayerInfo, tokens: torch.Tensor, keep: int, context) -> torch.Tensor:
        batch, seq_len = tokens.shape[:2]
        word = layer.stream if isinstance(layer.stream, torch.Tensor) else self.stream(layer.position)
        keys = rng.keys_from_table(self._streams.table(word, seq_len, tokens.device), batch)
        protected = self._protected(seq_len, tokens.device, context)
        if protected is not None:
            keys = torch.where(protected, keys + rng.KEY_LIMIT, keys)
        return ops.keep_top(keys, keep)

    def _protected(self, seq_len: int, device: torch.device, by_id: torch.Tensor | None) -> torch.Tensor | None:
        protected = by_id
        if self.protect_positions:
            arange = torch.arange(seq_len, device=device)
            for index in self.protect_positions:
                if not -seq_len <= index < seq_len:
                    raise RandomLTDError(f"protect_positions={self.protect_positions}: position {index} lies outside "
                                         f"sequences of {seq_len} tokens")
                hit = arange == index % seq_len
                protected = hit if protected is None else protected | hit
        return protected

    def ids_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, s)``: where ``input_ids`` holds a protected id (the context of ``protect_ids``)."""
        ids = self._ids_by_device.get(input_ids.device)
        if ids is None:  # copied to the device once, not per forward pass
            ids = self._ids_by_device[input_ids.device] = torch.tensor(self.protect_ids, device=input_ids.device)
        return torch.isin(input_ids, ids)

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        seed = state["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RandomLTDError(f"seed must be an integer, got {seed!r}")
        self.seed = seed


class FunctionStrategy(Strategy):
    """A plain function ``(position, tokens, keep, context) -> indices`` used as a strategy (no context)."""

    def __init__(self, function):
        self.function = function

    def select(self, layer: LayerInfo, tokens: torch.Tensor, keep: int, context) -> torch.Tensor | None:
        return self.function(layer.position, tokens, keep, context)


def as_strategy(strategy) -> Strategy:
    """``strategy`` itself when it has ``select``; a context-free plain function wrapped."""
    if callable(getattr(strategy, "select", None)) and hasattr(strategy, "needs_context"):
        if strategy.needs_context and not callable(getattr(strategy, "begin_forward", None)):
            raise RandomLTDError("a strategy with needs_context makes its context in begin_forward(inputs, keep)")
        return strategy
    if callable(strategy) and not getattr(strategy, "needs_context", False):
        return FunctionStrategy(strategy)
    raise RandomLTDError("a selection strategy has select(layer, tokens, keep, context) and needs_context "
                         "(see random_ltd.strategies.Strategy); a plain function (position, tokens, keep, context) "
                         "needs no context")
