"""Plain PyTorch: ``torch.nn.TransformerEncoderLayer``."""
from __future__ import annotations

import torch
import torch.nn as nn

from random_ltd.adapters.base import LayerAdapter, register_layer
from random_ltd.ops import attend_somewhere, gather_mask, gather_sequence


def _blocked(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    return mask <= torch.finfo(mask.dtype).min / 2


def _merge_masks(layer: nn.TransformerEncoderLayer, arguments: dict, indices: torch.Tensor) -> None:
    """Gather ``src_mask`` ((s, s) or (B*heads, s, s)) and the padding mask into one blocked mask.

    ``nn.MultiheadAttention`` combines the two masks itself, but a row can then end up fully
    blocked (NaN) even when each mask alone leaves a key open; merging first lets
    ``attend_somewhere`` see the combined mask. The result is ``(B*heads, k, k)``, boolean.
    """
    src_mask = arguments.get("src_mask")
    padding = arguments.get("src_key_padding_mask")
    if src_mask is None and padding is None:
        return
    batch, keep = indices.shape
    heads = layer.self_attn.num_heads
    blocked = torch.zeros(batch, 1, keep, keep, dtype=torch.bool, device=indices.device)
    if src_mask is not None:
        full = src_mask.reshape(-1, heads if src_mask.dim() == 3 else 1, *src_mask.shape[-2:])
        blocked = blocked | _blocked(gather_mask(full, indices))
    if padding is not None:
        blocked = blocked | _blocked(gather_sequence(padding, indices))[:, None, None, :]
    blocked = attend_somewhere(blocked, bool_means_keep=False)
    arguments["src_mask"] = blocked.expand(batch, heads, keep, keep).reshape(batch * heads, keep, keep)
    arguments["src_key_padding_mask"] = None
    # MultiheadAttention replaces the mask by its causal flag when no padding mask is given; the
    # merged mask already holds the causal structure (sorted indices keep it), so use the mask.
    arguments["is_causal"] = False


def _batch_first(layer: nn.TransformerEncoderLayer) -> bool:
    return layer.self_attn.batch_first


TRANSFORMER_ENCODER_LAYER = LayerAdapter(
    name="torch.nn.TransformerEncoderLayer",
    hidden="src",
    bool_means_keep=False,
    batch_first=_batch_first,  # a named function, not a lambda: models under random-LTD pickle
    prepare=_merge_masks,
)


def register_all() -> None:
    register_layer(nn.TransformerEncoderLayer, TRANSFORMER_ENCODER_LAYER)
