"""Inputs of a dropping layer that dense-mask gathering does not cover.

``gather_attention_inputs`` runs before ``random_ltd.gather`` gathers masks (dense and FlexAttention
``BlockMask``s alike) and positions, since it reads the original ``position_ids``: per-key biases
(ALiBi), flash attention's varlen boundaries of packed documents; it refuses a window flash would count in kept
positions, then checks that no other per-token tensor would reach the short layer at full length.
What does not change between calls (``AttentionSetup``) is read once, when the layer is wrapped.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from random_ltd.adapters.base import LayerAdapter, known_parameters
from random_ltd.attention.flex import is_block_mask
from random_ltd.attention.varlen import VARLEN_KWARGS, kept_varlen_kwargs
from random_ltd.errors import RandomLTDError

__all__ = ["AttentionSetup", "attention_setup", "check_no_full_length_inputs", "check_window_expressible",
           "gather_attention_inputs", "gather_key_bias", "is_block_mask"]


@dataclasses.dataclass(frozen=True)
class AttentionSetup:
    """What a wrapped layer's calls share: read once per wrap, not once per call.

    ``config``: the model config whose ``_attn_implementation`` the layer's attention follows (read
    at each call, so ``set_attn_implementation`` after ``apply`` is seen), or ``None``.
    ``sliding_window``: the window the layer's attention applies itself under flash attention.
    ``known``: the keyword arguments the adapter gathers or passes knowingly.
    """

    config: object | None
    sliding_window: int | None
    known: frozenset[str]

    @property
    def implementation(self) -> str | None:
        return getattr(self.config, "_attn_implementation", None)


def attention_setup(layer: nn.Module, adapter: LayerAdapter) -> AttentionSetup:
    return AttentionSetup(config=_attention_config(layer), sliding_window=sliding_window(layer),
                          known=frozenset(known_parameters(adapter) | set(VARLEN_KWARGS)))


def _attention_config(layer: nn.Module):
    for module in layer.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", None) is not None:
            return config
    return None


def sliding_window(layer: nn.Module) -> int | None:
    """The ``sliding_window`` a transformers layer hands its attention function, or ``None``.

    Layers that alternate local and global attention (Qwen2, Gemma-2/3, ModernBERT) hold it on the
    attention module, ``None`` on global layers; others (Mistral, Mixtral) read their config's.
    """
    for module in layer.modules():
        if "sliding_window" in vars(module):
            return vars(module)["sliding_window"]
    for module in layer.modules():
        window = getattr(getattr(module, "config", None), "sliding_window", None)
        if isinstance(window, int):
            return window
    return None


def check_window_expressible(implementation: str | None, window: int | None, seq_len: int) -> None:
    """Refuse a window flash attention would count in kept positions.

    transformers applies ``sliding_window`` in flash only when the keys outnumber it; so a window
    of at least ``seq_len`` never acts, with or without dropping. A shorter one would act on kept
    positions (a wider window in original positions), and flash's varlen call has no way to take
    original positions. sdpa, eager and flex receive the window in the mask built before the layers,
    in original positions, and gather it exactly.
    """
    if window is None or seq_len <= window or "flash" not in (implementation or ""):
        return
    raise RandomLTDError(
        f"this layer applies a sliding window of {window} tokens inside {implementation} attention, which would "
        f"count kept positions after dropping (sequence of {seq_len}); use attn_implementation='sdpa', 'eager' or "
        "'flex_attention' for layers with sliding windows, or exclude these layers from dropping (layers=...)"
    )


def gather_attention_inputs(layer: nn.Module, adapter: LayerAdapter, call, indices: torch.Tensor, seq_len: int,
                            setup: AttentionSetup | None = None) -> None:
    """Edit ``call`` (a ``random_ltd.calls.LayerCall``, the call's arguments by name) in place.

    ``setup``: the layer's ``attention_setup``, computed here when the caller kept none.
    """
    setup = setup if setup is not None else attention_setup(layer, adapter)
    check_window_expressible(setup.implementation, setup.sliding_window, seq_len)
    for name in adapter.key_biases:
        bias = call.get(name)
        if bias is not None:
            call[name] = gather_key_bias(bias, indices)
    _gather_varlen(setup.implementation, adapter, call, indices, seq_len)
    check_no_full_length_inputs(adapter, call, indices.shape[0], seq_len, setup.known)


def gather_key_bias(bias: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``(B*heads, 1, s)`` per-key biases -> ``(B*heads, 1, k)`` for the kept keys.

    ALiBi's bias is the key's original position times a per-head slope; kept keys keep their
    original positions, so the bias between any two kept tokens is unchanged.
    """
    batch, keep = indices.shape
    grouped = bias.reshape(batch, -1, bias.shape[-1])
    kept = grouped.gather(2, indices[:, None, :].expand(batch, grouped.shape[1], keep))
    return kept.reshape(*bias.shape[:-1], keep)


def _gather_varlen(implementation: str | None, adapter: LayerAdapter, call, indices: torch.Tensor,
                   seq_len: int) -> None:
    """Boundaries of the kept tokens when the caller gave some, or when flash reads them from positions."""
    cu_seq_lens = call.get("cu_seq_lens_q")
    if cu_seq_lens is None and "flash" not in (implementation or ""):
        return
    position_ids = next((call.get(name) for name in adapter.positions if call.get(name) is not None), None)
    varlen = kept_varlen_kwargs(indices, seq_len, cu_seq_lens, position_ids, call.get("max_length_q"))
    for name, value in (varlen or {}).items():
        call[name] = value


def check_no_full_length_inputs(adapter: LayerAdapter, call, batch: int, seq_len: int,
                                known: frozenset[str] | None = None) -> None:
    """Refuse a per-token tensor among the layer's ``**kwargs`` that no field of the adapter names."""
    known = known if known is not None else known_parameters(adapter) | set(VARLEN_KWARGS)
    for name, value in call.kwargs.items():
        if name in call.plan.names or name in known or not isinstance(value, torch.Tensor) or value.dim() < 2:
            continue
        if value.shape[1] == seq_len and value.shape[0] in (1, batch):
            raise RandomLTDError(
                f"{adapter.name} layers receive {name!r} of shape {tuple(value.shape)}, a per-token input random-LTD "
                f"does not know how to gather; register the layer with random_ltd.register_layer(..., "
                f"positions=({name!r},)) or the field that fits"
            )
