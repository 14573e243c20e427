"""Packed sequences: the varlen boundaries of the kept tokens.

Flash attention on a packed batch (documents concatenated into one row) attends within
documents whose boundaries it reads from ``cu_seq_lens`` or, when none are given, from
``position_ids`` (a document starts where the position is the smallest, 0). A gathered
``position_ids`` loses a document's start when its first token was dropped, merging it with its
neighbour; so the kept tokens get boundaries of their own, computed from the original ones.
"""
from __future__ import annotations

import torch

from random_ltd.ops import flat_indices

VARLEN_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def document_ids_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """``(B, s)`` packed positions -> ``(B*s,)`` document number of each token of the flattened stream."""
    flat = position_ids.reshape(-1)
    starts = flat == flat.min()
    starts[0] = True  # the stream's first token opens a document whatever its position
    return starts.cumsum(0) - 1


def document_ids_from_boundaries(cu_seq_lens: torch.Tensor, total: int) -> torch.Tensor:
    """``(D+1,)`` cumulative lengths over a stream of ``total`` tokens -> ``(total,)`` document numbers."""
    tokens = torch.arange(total, device=cu_seq_lens.device)
    return torch.searchsorted(cu_seq_lens[1:].to(tokens.dtype), tokens, right=True)


def kept_boundaries(document_ids: torch.Tensor, kept_rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``cu_seq_lens`` (int32, starting at 0) and the longest document of the kept tokens.

    ``kept_rows`` are the kept tokens' rows of the flattened stream, ascending. A document
    with no kept token has no entry. Reads the lengths on the host (flash's varlen call needs
    the maximum as a number, as transformers' own boundary computation does).
    """
    _, lengths = torch.unique_consecutive(document_ids[kept_rows], return_counts=True)
    cu_seq_lens = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=kept_rows.device)
    cu_seq_lens[1:] = lengths.cumsum(0)
    return cu_seq_lens, int(lengths.max())


def is_packed(position_ids: torch.Tensor | None) -> bool:
    """transformers' rule: one row whose positions are not a single run ``m, m+1, ...``."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1 or position_ids.shape[1] < 2:
        return False
    run = torch.arange(position_ids.shape[1], device=position_ids.device) + position_ids.min()
    return bool((run != position_ids[0]).any())


def kept_varlen_kwargs(indices: torch.Tensor, seq_len: int, cu_seq_lens: torch.Tensor | None,
                       position_ids: torch.Tensor | None) -> dict | None:
    """Flash attention's varlen keyword arguments for the kept tokens, or ``None`` when not packed.

    ``cu_seq_lens`` (the caller's, over the flattened ``(B*s)`` stream) wins over ``position_ids``.
    """
    if cu_seq_lens is not None:
        documents = document_ids_from_boundaries(cu_seq_lens, indices.shape[0] * seq_len)
    elif is_packed(position_ids):
        documents = document_ids_from_positions(position_ids)
    else:
        return None
    boundaries, longest = kept_boundaries(documents, flat_indices(indices, seq_len))
    return dict(zip(VARLEN_KWARGS, (boundaries, boundaries, longest, longest), strict=True))
