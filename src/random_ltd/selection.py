"""Which tokens a dropping layer keeps: selection strategies, and per-forward context.

A strategy is called by every dropping layer as ``strategy(stream, tokens, keep, context)``
and returns the kept positions ``(B, keep)`` sorted ascending, or ``None`` to run the layer on
every token. ``stream`` names the calling layer: what the strategy's ``stream(position)``
returned for it when it was wrapped (a tensor, so that compiled layers do not specialise on a
per-layer int), or its position for strategies without that method. ``tokens`` are the layer's
batch-first hidden states; ``context`` is what the model's inputs said about this forward pass
(see ``ForwardContext``), ``None`` for strategies that need nothing from them.

- ``UniformSelection``: random-LTD. Each layer draws its own uniform subset (``rng``), with
  optional protected tokens (positions, or positions holding given ids) chosen first.
- TokenBypass's importance top-k (``random_ltd.tokenbypass``) chooses once per forward pass, from
  the input ids, and every layer of its range reads that choice from the context.
"""
from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Protocol

import torch

from random_ltd import ops, rng
from random_ltd.errors import RandomLTDError


class Selection(Protocol):
    needs_context: bool

    def __call__(self, stream, tokens: torch.Tensor, keep: int, context) -> torch.Tensor | None: ...


class UniformSelection:
    """Uniform random subsets, independent per layer, sequence and forward pass.

    ``protect_positions`` (negative counts from the end) and tokens whose id is in
    ``protect_ids`` are kept before any drawn token; when they outnumber ``keep``, the first
    ``keep`` of them in key order are kept. ``protect_ids`` need the model's ``input_ids``,
    which ``random_ltd.apply`` passes as the context (a ``(B, s)`` boolean tensor).
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
        self._streams.reseed(seed)

    @property
    def needs_context(self) -> bool:
        return bool(self.protect_ids)

    def stream(self, position: int) -> torch.Tensor:
        """The layer at ``position``'s stream: a 0-d tensor that follows the seed (``rng.StreamWords``).
        A dropping layer holds it and passes it instead of its position, so compiled layers share graphs."""
        return self._streams.word(position)

    def __call__(self, stream: int | torch.Tensor, tokens: torch.Tensor, keep: int, context) -> torch.Tensor:
        """``stream``: the layer's ``stream(position)``, or its position."""
        batch, seq_len = tokens.shape[:2]
        word = self.stream(stream) if isinstance(stream, int) else stream
        keys = rng.keys_from_table(self._streams.table(word, seq_len, tokens.device), batch)
        protected = self._protected(seq_len, tokens.device, context)
        if protected is not None:
            keys = keys.masked_fill(protected, rng.KEY_LIMIT)
        return ops.keep_top(keys, keep)

    def _protected(self, seq_len: int, device: torch.device, by_id: torch.Tensor | None) -> torch.Tensor | None:
        protected = by_id
        if self.protect_positions:
            arange = torch.arange(seq_len, device=device)
            for index in self.protect_positions:
                hit = arange == index % seq_len
                protected = hit if protected is None else protected | hit
        return protected

    def ids_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, s)``: where ``input_ids`` holds a protected id (the context of ``protect_ids``)."""
        ids = self._ids_by_device.get(input_ids.device)
        if ids is None:  # copied to the device once, not per forward pass
            ids = self._ids_by_device[input_ids.device] = torch.tensor(self.protect_ids, device=input_ids.device)
        return torch.isin(input_ids, ids)


def _replaying() -> bool:
    """True inside a backward pass: where gradient checkpointing re-runs a layer's forward."""
    return torch._C._current_graph_task_id() != -1


class ForwardContext:
    """What the model's inputs say about the current forward pass, as each layer will see it.

    ``set`` is called by a forward pre-hook on the model. A layer reads the context with
    ``for_layer``; a checkpointed layer replayed during backward gets the context of the forward
    it replays, found by its input hidden states (checkpointing keeps them alive until then),
    not the context of whatever forward ran last.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.current = None
        self.capacity = capacity
        self._seen: collections.OrderedDict = collections.OrderedDict()

    def set(self, value) -> None:
        self.current = value

    def for_layer(self, position: int, hidden: torch.Tensor):
        key = (position, hidden.data_ptr(), tuple(hidden.shape))
        if _replaying():
            if key not in self._seen:
                raise RandomLTDError(
                    "a checkpointed layer is replayed for a forward pass whose context was forgotten "
                    f"(more than {self.capacity} layer calls ago): run backward sooner"
                )
            return self._seen[key]
        self._seen[key] = self.current
        self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return self.current

    def __getstate__(self) -> dict:
        return {"current": None, "capacity": self.capacity, "_seen": collections.OrderedDict()}
