"""Local attention windows in original positions.

A kept token ``q`` is original token ``indices[b, q]``; a window of ``w`` lets it see key ``kv``
when ``0 <= indices[b, q] - indices[b, kv] < w``. A layer that counts its window itself (GPT-Neo's
``bias`` buffer, flash attention's ``sliding_window``) counts *kept* positions instead, and a
kept-position window spans more original tokens. Since indices are sorted, a kept-position
distance never exceeds the original one: whatever a kept-position window blocks, the window in
original positions blocks too, so adding the latter to the layer's mask makes the layer exact.
"""
from __future__ import annotations

import torch

from random_ltd.ops import additive_mask


def window_allows(indices: torch.Tensor, window: int, queries: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, 1, q, k)`` bool: causal and within ``window`` in original positions, for the queries at
    ``queries`` ``(B, q)`` (default the keys ``indices`` ``(B, k)`` themselves)."""
    queries = indices if queries is None else queries
    distance = queries[:, :, None] - indices[:, None, :]
    return ((distance >= 0) & (distance < window)).unsqueeze(1)


def restrict_to_window(mask: torch.Tensor | None, indices: torch.Tensor, window: int,
                       dtype: torch.dtype, queries: torch.Tensor | None = None) -> torch.Tensor:
    """A gathered ``(B or 1, H, q, k)`` mask (bool: True = attend, or additive float) with the window added.

    ``None`` (nothing masked) becomes an additive mask of ``dtype``. The diagonal stays open, so a
    row that attended somewhere still does.
    """
    allowed = window_allows(indices, window, queries)
    if mask is None:
        return additive_mask(allowed, dtype)
    if mask.dtype == torch.bool:
        return mask & allowed
    return mask.masked_fill(~allowed, torch.finfo(mask.dtype).min)
