"""Per-forward contexts of a selection strategy, found again when checkpointing replays a layer.

A strategy that reads the model's inputs (``needs_context``) makes a context at the start of each
training forward (``begin``, called by the model's forward pre-hook). A dropping layer asks for
it with ``for_layer(position, hidden)``. Gradient checkpointing re-runs the layer's forward during
backward, possibly after later forwards began (several forwards then one backward; forward A,
forward B, backward B, backward A), so the context cannot be "the latest one": each fresh call
files the context under its input hidden states, and a replay finds it there.

The key is the input's storage, as a Python object: a tensor, its ``.detach()`` (what reentrant
checkpointing replays with) and its views share one storage object, which lives exactly as long
as the memory, and can be weakly referenced. So the table needs no capacity (an entry goes with
its tensors), no address (a freed address reused by another forward cannot alias it) and no
private torch API. Within a storage, the entry is keyed by offset, shape and the layer's position.
A ``DTensor`` (sequence parallel) is keyed by its local shard, the tensor checkpointing keeps.

A call made while the model's forward runs (between its pre-hook, ``begin``, and its post-hook,
``end``) is a call of that forward: it files the forward's context under its input. A call made
outside it is a replay (backward runs after the forward returned, also when other forwards,
evaluation ones included, ran since), which looks its input up; a layer called outside any model
forward, on an input no forward filed, is an error (its strategy would silently miss its inputs).
A tensor reused as a dropping layer's input by two forwards before the first one's backward (only
possible for a model's own input tensor) cannot tell its replays apart: such a replay is refused
rather than given either context.
"""
from __future__ import annotations

import dataclasses
import weakref

import torch

from random_ltd.errors import RandomLTDError
from random_ltd.sharding import is_dtensor


@dataclasses.dataclass(eq=False)
class Entry:
    context: object
    replayed: bool = False
    ambiguous: bool = False


class ForwardContexts:
    """The current forward's context, and every live layer input's context (see the module doc)."""

    def __init__(self) -> None:
        self.current = None
        self.running = False
        self._by_storage: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def begin(self, context) -> None:
        """A forward of the model starts (``context`` ``None``: a forward that drops nothing)."""
        self.current, self.running = context, True

    def end(self) -> None:
        """The forward returned (or raised): from now on a layer call is a replay."""
        self.running = False

    def for_layer(self, position: int, hidden: torch.Tensor):
        """The context of the forward that ``hidden`` (a dropping layer's input) belongs to."""
        local = hidden.to_local() if is_dtensor(hidden) else hidden
        entries = self._by_storage.get(local.untyped_storage())
        key = (position, local.storage_offset(), tuple(local.shape))
        entry = None if entries is None else entries.get(key)
        if self.running:
            return self._file(local, key, entry, self.current)
        if entry is None:
            raise RandomLTDError(
                f"layer {position} ran outside a forward of the model random_ltd.apply was given, and its strategy "
                "reads that model's inputs: call the model itself (a wrapper calling model.forward(...) directly, "
                "or a submodule called alone, skips the model's forward hooks)"
            )
        if entry.ambiguous:
            raise RandomLTDError(
                f"layer {position} is replayed by gradient checkpointing on an input tensor that two forward passes "
                "gave it before the first one's backward, with different contexts: the replay cannot tell which "
                "forward it belongs to. Give each forward its own input tensor (e.g. inputs_embeds.clone())"
            )
        entry.replayed = True
        return entry.context

    def _file(self, local: torch.Tensor, key: tuple, previous: Entry | None, context):
        ambiguous = previous is not None and not previous.replayed and previous.context is not context
        entries = self._by_storage.get(local.untyped_storage())
        if entries is None:
            entries = self._by_storage[local.untyped_storage()] = {}
        entries[key] = Entry(context, ambiguous=ambiguous)
        return context

    def __len__(self) -> int:
        """How many layer inputs are filed (they leave with their tensors)."""
        return sum(len(entries) for entries in self._by_storage.values())

    def __getstate__(self) -> dict:
        return {}  # a copy of the model starts with no forward in flight

    def __setstate__(self, state: dict) -> None:
        self.__init__()
