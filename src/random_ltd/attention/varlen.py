"""Packed sequences: the varlen boundaries of the kept tokens, computed without a host sync.

Flash attention on a packed batch (documents concatenated into one row) attends within
documents whose boundaries it reads from ``cu_seq_lens`` or, when none are given, from
``position_ids`` (a document starts where the position is the smallest, 0). A gathered
``position_ids`` loses a document's start when its first token was dropped, merging it with its
neighbour; so the kept tokens get boundaries of their own, computed from the original ones.

Nothing here reads the device from the host (one sync per dropping layer otherwise):
- ``cu_seq_lens`` has a fixed size, one entry per kept token plus one: a kept document holds at
  least one kept token. Unused entries repeat the total, i.e. empty documents at the end. Flash
  attention takes empty documents: each thread block reads its document's bounds from
  ``cu_seqlens`` and returns early on an empty one (flash-attention issue #1537 shows them
  running, and failing only when ``max_seqlen`` is 1: hence the bound below is at least 2).
- ``max_length`` is an upper bound known on the host: flash sizes its grid with it
  (``num_m_block = ceil(max_seqlen_q / kBlockM)`` in ``flash_fwd_launch_template.h``) and each
  block stops at its document's real end, so a bound costs idle blocks, never wrong results. A
  kept document has at most as many tokens as are kept, and no more than the caller's longest.
- packing is decided by shape, not by value: one row with ``position_ids`` gets boundaries
  (a row that is one run ``m, m+1, ...`` gets one document, which flash treats as no packing).
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


def kept_boundaries(document_ids: torch.Tensor, kept_rows: torch.Tensor) -> torch.Tensor:
    """``(n+1,)`` int32 ``cu_seq_lens`` of the ``n`` kept tokens (rows of the flattened stream, ascending).

    Entry ``i`` is where the ``i``-th kept document starts; past the last document, ``n``.
    """
    kept_documents = document_ids[kept_rows]
    opens = torch.ones_like(kept_documents, dtype=torch.bool)
    opens[1:] = kept_documents[1:] != kept_documents[:-1]
    ordinal = opens.cumsum(0) - 1  # the kept document each kept token belongs to, non-decreasing
    slots = torch.arange(kept_rows.numel() + 1, device=kept_rows.device)
    return torch.searchsorted(ordinal, slots).to(torch.int32)


def is_packed(position_ids: torch.Tensor | None, batch: int, seq_len: int) -> bool:
    """Whether flash could read documents from these positions: one row of the sequence's length (by shape)."""
    return position_ids is not None and batch == 1 and tuple(position_ids.shape) == (1, seq_len)


def longest_bound(kept: int, given: int | None) -> int:
    """A host-side bound on the longest kept document (at least 2, see the module docstring)."""
    bound = kept if not isinstance(given, int) else min(given, kept)
    return max(bound, 2)


def kept_varlen_kwargs(indices: torch.Tensor, seq_len: int, cu_seq_lens: torch.Tensor | None,
                       position_ids: torch.Tensor | None, max_length: int | None = None) -> dict | None:
    """Flash attention's varlen keyword arguments for the kept tokens, or ``None`` when not packed.

    ``cu_seq_lens`` (the caller's, over the flattened ``(B*s)`` stream) wins over ``position_ids``;
    ``max_length``: the caller's longest document, when it gave one as a number.
    """
    if cu_seq_lens is not None:
        documents = document_ids_from_boundaries(cu_seq_lens, indices.shape[0] * seq_len)
    elif is_packed(position_ids, indices.shape[0], seq_len):
        documents = document_ids_from_positions(position_ids)
    else:
        return None
    boundaries = kept_boundaries(documents, flat_indices(indices, seq_len))
    longest = longest_bound(indices.numel(), max_length)
    return dict(zip(VARLEN_KWARGS, (boundaries, boundaries, longest, longest), strict=True))
