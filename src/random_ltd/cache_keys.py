"""The original positions a routed layer's KV cache holds, for causal routing at generation.

Under a weighted strategy (Mixture-of-Depths, ``random_ltd.mod``) a layer's cache holds the keys
of only the tokens that ran it, while the model hands every layer masks and key biases over all
positions so far. ``HeldKeys`` records, per cache and routed layer, how many tokens the model has
passed the layer and the original positions of the keys its cache holds; when a new token runs the
layer, ``gather_key_inputs`` keeps the key columns of those positions and the new token's.

The record lives on the cache object. The cache operations of ``generate`` that move or repeat
sequences (beam search, contrastive search) move the record with them; cropping a cache (assisted
decoding) cannot be followed in original positions and is refused.
"""
from __future__ import annotations

import dataclasses

import torch

from random_ltd import ops
from random_ltd.adapters.base import LayerAdapter
from random_ltd.attention.flex import is_block_mask
from random_ltd.attention.other_inputs import gather_key_bias
from random_ltd.calls import LayerCall
from random_ltd.errors import RandomLTDError

_RECORDS = "_random_ltd_held_keys"


@dataclasses.dataclass(frozen=True)
class HeldKeys:
    """``seen``: tokens the model has passed the layer with this cache; ``positions`` ``(B, c)``: the
    original positions of the ``c`` keys the layer's cache holds, ascending."""

    seen: int
    positions: torch.Tensor
    fillers: bool = False

    def after(self, indices: torch.Tensor, seq_len: int, fillers: bool = False) -> HeldKeys:
        """The record once this call's ``seq_len`` tokens passed and those at ``indices`` ``(B, k)`` ran
        (``fillers``: some of them only to fill a batch whose sequences route differently)."""
        return HeldKeys(self.seen + seq_len, torch.cat([self.positions, self.seen + indices], dim=1),
                        self.fillers or fillers)


def held_keys(cache, layer: int, batch: int, device: torch.device, filled: bool) -> HeldKeys:
    """The record of routed layer ``layer`` in ``cache`` (empty for a cache that holds nothing of it yet)."""
    record = _records(cache).get(layer)
    if record is None:
        if filled:
            raise RandomLTDError("causal routing: this cache already holds keys of a routed layer that it did not "
                                 "see being filled (filled before Mixture-of-Depths was applied, or in training "
                                 "mode); generate from a fresh cache in evaluation mode")
        return HeldKeys(0, torch.zeros(batch, 0, dtype=torch.long, device=device))
    if filled and record.fillers:
        raise RandomLTDError("causal routing: this cache was filled by a batch whose sequences route differently "
                             "(a routed layer's cache holds keys some of them did not choose); generate one "
                             "sequence per call")
    if record.positions.shape[0] != batch:
        raise RandomLTDError(f"causal routing: the cache holds {record.positions.shape[0]} sequences, this call "
                             f"passes {batch}")
    return record


def note_held_keys(cache, layer: int, record: HeldKeys) -> None:
    records = _records(cache)
    if not records:
        _follow_cache_operations(cache)
    records[layer] = record


def gather_key_inputs(adapter: LayerAdapter, call: LayerCall, keys: torch.Tensor, total: int) -> None:
    """Keep the key columns ``keys`` ``(B, c)`` of the call's masks, key biases and padding masks, whose
    key axis spans the ``total`` positions so far (one new token's query row stays as it is)."""
    for name in (*adapter.masks, *adapter.key_biases, *adapter.padding_masks):
        value = call.get(name)
        if value is None:
            continue
        if is_block_mask(value) or not isinstance(value, torch.Tensor):
            raise RandomLTDError(f"causal routing with a cache: {name} is a {type(value).__name__}; generation "
                                 "supports tensor masks (attn_implementation 'sdpa' or 'eager')")
        if value.shape[-1] != total:
            raise RandomLTDError(f"causal routing with a cache: {name} spans {value.shape[-1]} keys, not the "
                                 f"{total} tokens seen so far (a static cache, or one that keeps a window of keys); "
                                 "pass cache=transformers.DynamicCache() made without the config: it keeps "
                                 "every key, and the model's mask applies the window")
        gather = gather_key_bias if name in adapter.key_biases else ops.gather_mask  # one query row: keys only
        call[name] = gather(value, keys)


def _records(cache) -> dict[int, HeldKeys]:
    records = cache.__dict__.get(_RECORDS)
    if records is None:
        records = cache.__dict__[_RECORDS] = {}
    return records


def _follow_cache_operations(cache) -> None:
    """The cache's class becomes a subclass whose operations keep the records in step (a class, not
    wrappers on the instance: a deep copy of the cache then acts on itself, and no cycle keeps it alive)."""
    if type(cache).__dict__.get("_follows_held_keys"):
        return
    base = type(cache)
    if base not in _FOLLOWING:
        methods = {name: method for name, method in _OPERATIONS.items() if hasattr(base, name)}
        _FOLLOWING[base] = type(base.__name__, (base,), {**methods, "_follows_held_keys": True,
                                                          "__module__": base.__module__})
    cache.__class__ = _FOLLOWING[base]


def _moved(cache, select) -> None:
    records = _records(cache)
    for layer, record in records.items():
        records[layer] = dataclasses.replace(record, positions=select(record.positions))


def _reorder_cache(self, beam_idx, *args, **kwargs):
    result = super(type(self), self).reorder_cache(beam_idx, *args, **kwargs)
    _moved(self, lambda positions: positions.index_select(0, beam_idx.to(positions.device)))
    return result


def _batch_select_indices(self, indices, *args, **kwargs):
    result = super(type(self), self).batch_select_indices(indices, *args, **kwargs)
    _moved(self, lambda positions: positions[indices])
    return result


def _batch_repeat_interleave(self, repeats, *args, **kwargs):
    result = super(type(self), self).batch_repeat_interleave(repeats, *args, **kwargs)
    _moved(self, lambda positions: positions.repeat_interleave(repeats, dim=0))
    return result


def _reset(self, *args, **kwargs):
    result = super(type(self), self).reset(*args, **kwargs)
    _records(self).clear()
    return result


def _crop(self, *args, **kwargs):
    raise RandomLTDError("causal routing: cropping a cache (assisted or speculative decoding) is not supported "
                         "under Mixture-of-Depths: a routed layer's cache holds keys of some positions only")


_OPERATIONS = {"reorder_cache": _reorder_cache, "batch_select_indices": _batch_select_indices,
               "batch_repeat_interleave": _batch_repeat_interleave, "reset": _reset, "crop": _crop}
_FOLLOWING: dict[type, type] = {}
