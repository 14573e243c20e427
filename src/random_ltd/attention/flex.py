"""FlexAttention: the kept tokens' ``BlockMask``, built from the original ``mask_mod``.

A ``BlockMask`` is defined by ``mask_mod(b, h, q_idx, kv_idx) -> bool``. On the kept subsequence
query ``q`` is original token ``indices[b, q]``, so the kept tokens' mask is
``mask_mod(b, h, indices[b, q], indices[b, kv])``: causality, padding, documents and sliding
windows carry over exactly, and no dense mask of either length is ever materialised.
"""
from __future__ import annotations

import torch

from random_ltd.errors import RandomLTDError


def is_block_mask(value) -> bool:
    block_mask = _block_mask_class()
    return block_mask is not None and isinstance(value, block_mask)


def _block_mask_class():
    try:
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError:  # a torch without FlexAttention cannot have produced one
        return None
    return BlockMask


def compose_mask_mod(mask_mod, indices: torch.Tensor, gather_queries: bool = True, source_batch: int | None = None):
    """``mask_mod`` seen from the kept tokens: ``(b, h, q, kv) -> mask_mod(b, h, idx[b, q], idx[b, kv])``.

    ``source_batch`` 1 means the original mask is shared by the batch (its ``b`` is always 0).
    With ``gather_queries=False`` queries keep their own index (cross-length masks).
    """
    shared = source_batch == 1

    def kept_mask_mod(b, h, q_idx, kv_idx):
        source_b = b * 0 if shared else b
        query = indices[b, q_idx] if gather_queries else q_idx
        return mask_mod(source_b, h, query, indices[b, kv_idx])

    return kept_mask_mod


def gather_block_mask(mask, indices: torch.Tensor, seq_len: int):
    """The ``BlockMask`` of the kept tokens ``indices`` (``(B, k)``, sorted) of a length-``seq_len`` mask.

    Keys are always the kept tokens; queries are gathered when the mask's query length is
    ``seq_len`` (self-attention). Built with ``create_block_mask`` at the kept length, with the
    original block size.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    if mask.mask_mod is None:
        raise RandomLTDError("this BlockMask has no mask_mod: it cannot be composed with the kept tokens")
    source_batch, heads, query_len, _ = mask.shape
    batch, keep = indices.shape
    gather_queries = query_len == seq_len
    mask_mod = compose_mask_mod(mask.mask_mod, indices, gather_queries, source_batch)
    return create_block_mask(mask_mod, batch, heads, keep if gather_queries else query_len, keep,
                             device=indices.device, BLOCK_SIZE=mask.BLOCK_SIZE)
