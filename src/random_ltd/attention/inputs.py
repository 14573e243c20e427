"""Inputs of a dropping layer that dense-mask gathering does not cover.

``gather_attention_inputs`` runs before the wrapper gathers dense masks and positions (it reads the
original ``position_ids``): FlexAttention ``BlockMask``s, per-key biases (ALiBi), flash
attention's varlen boundaries of packed documents; then it checks that no other per-token
tensor would reach the short layer at full length.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from random_ltd.adapters.base import LayerAdapter, known_parameters
from random_ltd.attention.flex import gather_block_mask, is_block_mask
from random_ltd.attention.varlen import VARLEN_KWARGS, kept_varlen_kwargs
from random_ltd.errors import RandomLTDError

__all__ = ["gather_attention_inputs", "gather_key_bias", "is_block_mask", "check_no_full_length_inputs"]


def gather_attention_inputs(layer: nn.Module, adapter: LayerAdapter, call, indices: torch.Tensor, seq_len: int) -> None:
    """Edit ``call`` (a ``random_ltd.calls.LayerCall``, the call's arguments by name) in place."""
    for name in adapter.masks:
        mask = call.get(name)
        if is_block_mask(mask):
            call[name] = gather_block_mask(mask, indices, seq_len)
    for name in adapter.key_biases:
        bias = call.get(name)
        if bias is not None:
            call[name] = gather_key_bias(bias, indices)
    _gather_varlen(layer, adapter, call, indices, seq_len)
    check_no_full_length_inputs(adapter, call, indices.shape[0], seq_len)


def gather_key_bias(bias: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``(B*heads, 1, s)`` per-key biases -> ``(B*heads, 1, k)`` for the kept keys.

    ALiBi's bias is the key's original position times a per-head slope; kept keys keep their
    original positions, so the bias between any two kept tokens is unchanged.
    """
    batch, keep = indices.shape
    grouped = bias.reshape(batch, -1, bias.shape[-1])
    kept = grouped.gather(2, indices[:, None, :].expand(batch, grouped.shape[1], keep))
    return kept.reshape(*bias.shape[:-1], keep)


def attention_implementation(layer: nn.Module) -> str | None:
    for module in layer.modules():
        implementation = getattr(getattr(module, "config", None), "_attn_implementation", None)
        if implementation is not None:
            return implementation
    return None


def _gather_varlen(layer, adapter: LayerAdapter, call, indices: torch.Tensor, seq_len: int) -> None:
    """Boundaries of the kept tokens when the caller gave some, or when flash reads them from positions."""
    cu_seq_lens = call.get("cu_seq_lens_q")
    if cu_seq_lens is None and "flash" not in (attention_implementation(layer) or ""):
        return
    position_ids = next((call.get(name) for name in adapter.positions if call.get(name) is not None), None)
    varlen = kept_varlen_kwargs(indices, seq_len, cu_seq_lens, position_ids)
    for name, value in (varlen or {}).items():
        call[name] = value


def check_no_full_length_inputs(adapter: LayerAdapter, call, batch: int, seq_len: int) -> None:
    """Refuse a per-token tensor among the layer's ``**kwargs`` that no field of the adapter names."""
    known = known_parameters(adapter) | set(VARLEN_KWARGS)
    for name, value in call.kwargs.items():
        if name in call.plan.names or name in known or not isinstance(value, torch.Tensor) or value.dim() < 2:
            continue
        if value.shape[1] == seq_len and value.shape[0] in (1, batch):
            raise RandomLTDError(
                f"{adapter.name} layers receive {name!r} of shape {tuple(value.shape)}, a per-token input random-LTD "
                f"does not know how to gather; register the layer with random_ltd.register_layer(..., "
                f"positions=({name!r},)) or the field that fits"
            )
