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
from random_ltd.attention.flex import gather_block_mask, is_block_mask
from random_ltd.attention.other_inputs import AttentionSetup, gather_attention_inputs
from random_ltd.calls import LayerCall
from random_ltd.errors import RandomLTDError


def gather_inputs(layer: nn.Module, adapter: LayerAdapter, call: LayerCall, indices: torch.Tensor,
                  seq_len: int, memo: dict | None = None, attention: AttentionSetup | None = None,
                  keep_caches: bool = False) -> None:
    """``memo``: gathered masks and positions by argument name, reused while the call passes the same
    tensor (the layers of one route share one dict: ``random_ltd.routes``); ``attention``: the layer's
    per-wrap attention setup (``random_ltd.attention.other_inputs``); ``keep_caches``: pass the
    caches on (causal routing at generation, ``random_ltd.mod``: the kept tokens enter the cache)."""
    # before the positions are gathered: the varlen boundaries read them
    gather_attention_inputs(layer, adapter, call, indices, seq_len, attention)
    _gather_masks(adapter, call, indices, seq_len, memo)
    for name in adapter.positions:
        _replace(call, name, memo, lambda positions: ops.gather_sequence(positions, indices))
    for name in adapter.position_pairs:
        _replace(call, name, memo, lambda pair: tuple(ops.gather_sequence(part, indices) for part in pair))
    for name in adapter.shared_position_pairs:  # one draw per batch: row 0 holds every row's indices
        pair = call.get(name)
        if pair is not None:
            call[name] = tuple(ops.gather_table_tail(part, indices[0], seq_len) for part in pair)
    for name in () if keep_caches else adapter.caches:
        call.set_if_present(name, None)
    if adapter.use_cache and not keep_caches:
        call.set_if_present(adapter.use_cache, False)
    if adapter.prepare is not None:
        adapter.prepare(layer, call, indices)


def _replace(call: LayerCall, name: str, memo: dict | None, gather) -> None:
    """``call[name] = gather(call[name])`` unless it is ``None``; from ``memo`` when it holds this very value."""
    value = call.get(name)
    if value is None:
        return
    if memo is not None and name in memo and memo[name][0] is value:
        call[name] = memo[name][1]
        return
    call[name] = gathered = gather(value)
    if memo is not None:
        memo[name] = (value, gathered)


def _gather_masks(adapter: LayerAdapter, call: LayerCall, indices: torch.Tensor, seq_len: int,
                  memo: dict | None) -> None:
    for name in adapter.masks:
        mask = call.get(name)
        if is_block_mask(mask):  # FlexAttention: composed with the kept indices (random_ltd.attention.flex)
            _replace(call, name, memo, lambda mask: gather_block_mask(mask, indices, seq_len))
        elif mask is not None:
            check_tensor_mask(name, mask)
            _replace(call, name, memo, lambda mask: ops.attend_somewhere(ops.gather_mask(mask, indices),
                                                                         adapter.bool_means_keep))
    for name in adapter.query_masks:
        mask = call.get(name)
        if mask is not None and mask.shape[-2] == seq_len:
            _replace(call, name, memo, lambda mask: ops.gather_sequence(mask, indices, dim=mask.dim() - 2))
    for name in adapter.padding_masks:
        _replace(call, name, memo, lambda mask: ops.attend_somewhere(ops.gather_sequence(mask, indices),
                                                                     adapter.bool_means_keep))


def check_tensor_mask(name: str, mask) -> None:
    if not isinstance(mask, torch.Tensor):
        raise RandomLTDError(
            f"{name} is a {type(mask).__name__}, neither a tensor nor a FlexAttention BlockMask: this attention "
            "implementation is not supported; use attn_implementation='sdpa', 'eager' or 'flex_attention'"
        )


def mask_fillers(layer: nn.Module, adapter: LayerAdapter, call: LayerCall, valid: torch.Tensor,
                 attention: AttentionSetup | None, dtype: torch.dtype) -> None:
    """No kept token attends to a filler (``valid`` ``(B, k)`` False): the slots a sequence that keeps
    fewer tokens than the batch's most fills (causal routing, ``random_ltd.mod``). A filler's own row
    still attends somewhere; its output is discarded. Call after ``gather_inputs``."""
    refused = "causal routing of a batch whose sequences route differently needs a dense attention mask: "
    if attention is not None and "flash" in (attention.implementation or ""):
        raise RandomLTDError(refused + "flash attention has none (evaluate one sequence per call)")
    names = [name for name in adapter.masks if call.get(name) is not None] or list(adapter.masks[:1])
    if not names:
        raise RandomLTDError(refused + f"this layer ({type(layer).__name__}) takes none this library knows of "
                             "(evaluate one sequence per call)")
    open_keys = valid[:, None, None, :]
    for name in names:
        mask = call.get(name)
        if mask is None:
            mask = _open_mask(layer, valid, dtype, refused)
        elif is_block_mask(mask) or not isinstance(mask, torch.Tensor) or mask.dim() != 4:
            raise RandomLTDError(refused + f"{name} is a {type(mask).__name__} of another form "
                                 "(use attn_implementation 'sdpa' or 'eager', or evaluate one sequence per call)")
        elif mask.dtype == torch.bool:
            mask = mask & open_keys if adapter.bool_means_keep else mask | ~open_keys
        else:
            mask = mask.masked_fill(~open_keys, torch.finfo(mask.dtype).min)
        call[name] = ops.attend_somewhere(mask, adapter.bool_means_keep)


def _open_mask(layer: nn.Module, valid: torch.Tensor, dtype: torch.dtype, refused: str) -> torch.Tensor:
    """An additive ``(B, 1, k, k)`` mask for a call that had none: causal when the layer's attention is
    (the kept tokens are in their original order), the fillers' keys blocked."""
    causal = next((module.is_causal for module in layer.modules() if isinstance(getattr(module, "is_causal", None),
                                                                              bool)), None)
    if causal is None:
        raise RandomLTDError(refused + f"this layer ({type(layer).__name__}) was called without one and does not "
                             "say whether it is causal (evaluate one sequence per call)")
    keep = valid.shape[1]
    allowed = valid[:, None, None, :].expand(-1, 1, keep, keep)
    if causal:
        allowed = allowed & torch.ones(keep, keep, dtype=torch.bool, device=valid.device).tril()
    return ops.additive_mask(allowed, dtype)
