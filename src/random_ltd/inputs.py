"""Gathering a layer's other inputs to the kept tokens: masks, positions, caches.

``gather_inputs(layer, adapter, call, indices, seq_len)`` edits the arguments of one layer call
(``random_ltd.calls.LayerCall``) so that every per-token input the adapter names lines up with the
kept hidden states. The tensor work is in ``random_ltd.ops``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from random_ltd import ops
from random_ltd.adapters.base import LayerAdapter
from random_ltd.attention.inputs import gather_attention_inputs, is_block_mask
from random_ltd.calls import LayerCall
from random_ltd.errors import RandomLTDError


def gather_inputs(layer: nn.Module, adapter: LayerAdapter, call: LayerCall, indices: torch.Tensor,
                  seq_len: int) -> None:
    gather_attention_inputs(layer, adapter, call, indices, seq_len)  # reads positions before they are gathered
    _gather_masks(adapter, call, indices, seq_len)
    for name in adapter.positions:
        positions = call.get(name)
        if positions is not None:
            call[name] = ops.gather_sequence(positions, indices)
    for name in adapter.position_pairs:
        pair = call.get(name)
        if pair is not None:
            call[name] = tuple(ops.gather_sequence(part, indices) for part in pair)
    for name in adapter.shared_position_pairs:  # one draw per batch: row 0 holds every row's indices
        pair = call.get(name)
        if pair is not None:
            call[name] = tuple(ops.gather_table_tail(part, indices[0], seq_len) for part in pair)
    for name in adapter.caches:
        call.set_if_present(name, None)
    if adapter.use_cache:
        call.set_if_present(adapter.use_cache, False)
    if adapter.prepare is not None:
        adapter.prepare(layer, call, indices)


def _gather_masks(adapter: LayerAdapter, call: LayerCall, indices: torch.Tensor, seq_len: int) -> None:
    for name in adapter.masks:
        mask = call.get(name)
        if mask is not None and not is_block_mask(mask):  # block masks: gathered by gather_attention_inputs
            check_tensor_mask(name, mask)
            call[name] = ops.attend_somewhere(ops.gather_mask(mask, indices), adapter.bool_means_keep)
    for name in adapter.query_masks:
        mask = call.get(name)
        if mask is not None and mask.shape[-2] == seq_len:
            call[name] = ops.gather_sequence(mask, indices, dim=mask.dim() - 2)
    for name in adapter.padding_masks:
        mask = call.get(name)
        if mask is not None:
            call[name] = ops.attend_somewhere(ops.gather_sequence(mask, indices), adapter.bool_means_keep)


def check_tensor_mask(name: str, mask) -> None:
    if not isinstance(mask, torch.Tensor):
        raise RandomLTDError(
            f"{name} is a {type(mask).__name__}, neither a tensor nor a FlexAttention BlockMask: this attention "
            "implementation is not supported; use attn_implementation='sdpa', 'eager' or 'flex_attention'"
        )
