"""FlexAttention: the kept tokens' ``BlockMask``, built from the original ``mask_mod``.

A ``BlockMask`` is defined by ``mask_mod(b, h, q_idx, kv_idx) -> bool``. On the kept subsequence
query ``q`` is original token ``indices[b, q]``, so the kept tokens' mask is
``mask_mod(b, h, indices[b, q], indices[b, kv])``: causality, padding, documents and sliding
windows carry over exactly, and no dense mask of either length is ever materialised.

A mask that depends only on the *order* of ``q`` and ``kv`` (transformers' causal and bidirectional
masks of an unpadded, unpacked batch) is the same for any sorted kept indices: the original
``mask_mod`` at the kept length. It is built once per original ``BlockMask`` (which the model builds
once per forward and hands to every layer) and kept length, and dies with the forward's mask.
Padding, documents and windows depend on the tokens kept: those masks are built per layer, by
evaluating the ``mask_mod`` once on broadcast index tensors (transformers' mask functions are
written to broadcast) and cutting the dense result into blocks — several times faster than
``create_block_mask``'s ``vmap`` over every ``(b, h, q, kv)`` (``random-ltd bench``'s flex section
measures it). A ``mask_mod`` that does not broadcast goes through ``create_block_mask``.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

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


_SHARED_KEPT_MASKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def order_only(mask_mod) -> bool:
    """True for transformers' causal or bidirectional ``mask_mod`` with no offset, padding or packing.

    transformers 5.x hands flex ``add_offsets_to_mask_function(base, q_offset, kv_offset)``; padding,
    packing and windows wrap ``base`` in further closures (``and_masks`` ...), so they are not
    recognised and keep the per-layer path.
    """
    try:
        from transformers import masking_utils
    except ImportError:
        return False
    bases = (masking_utils.causal_mask_function, masking_utils.bidirectional_mask_function)
    if mask_mod in bases:
        return True
    if getattr(mask_mod, "__qualname__", "") != "add_offsets_to_mask_function.<locals>.inner_mask":
        return False
    captured = dict(zip(mask_mod.__code__.co_freevars, (cell.cell_contents for cell in mask_mod.__closure__),
                        strict=True))
    return captured.get("mask_function") in bases and captured.get("q_offset") == 0 == captured.get("kv_offset")


def gather_block_mask(mask, indices: torch.Tensor, seq_len: int):
    """The ``BlockMask`` of the kept tokens ``indices`` (``(B, k)``, sorted) of a length-``seq_len`` mask.

    Keys are always the kept tokens; queries are gathered when the mask's query length is
    ``seq_len`` (self-attention). Built with ``create_block_mask`` at the kept length, with the
    original block size; once per mask and kept length for ``order_only`` masks.
    """
    if mask.mask_mod is None:
        raise RandomLTDError("this BlockMask has no mask_mod: it cannot be composed with the kept tokens")
    source_batch, heads, query_len, _ = mask.shape
    batch, keep = indices.shape
    gather_queries = query_len == seq_len
    if gather_queries and not torch.compiler.is_compiling() and order_only(mask.mask_mod):
        return _shared_kept_mask(mask, batch, keep, indices.device)
    mask_mod = compose_mask_mod(mask.mask_mod, indices, gather_queries, source_batch)
    return build_block_mask(mask_mod, batch, heads, keep if gather_queries else query_len, keep, indices.device,
                            mask.BLOCK_SIZE)


def _shared_kept_mask(mask, batch: int, keep: int, device):
    kept_masks = _SHARED_KEPT_MASKS.setdefault(mask, {})
    key = (batch, keep, device)
    if key not in kept_masks:
        kept_masks[key] = build_block_mask(mask.mask_mod, batch, mask.shape[1], keep, keep, device, mask.BLOCK_SIZE)
    return kept_masks[key]


def build_block_mask(mask_mod, batch: int, heads: int, query_len: int, key_len: int, device, block_size):
    """A ``BlockMask`` of ``mask_mod``: from its broadcast evaluation if it broadcasts, else ``create_block_mask``."""
    if not torch.compiler.is_compiling():
        dense = _broadcast_dense(mask_mod, batch, heads, query_len, key_len, device)
        if dense is not None:
            return block_mask_from_dense(dense, mask_mod, block_size)
    from torch.nn.attention import flex_attention

    return flex_attention.create_block_mask(mask_mod, batch, heads, query_len, key_len, device=device,
                                            BLOCK_SIZE=block_size)


def _broadcast_dense(mask_mod, batch: int, heads: int, query_len: int, key_len: int, device) -> torch.Tensor | None:
    """``mask_mod`` on ``(B,1,1,1)``, ``(1,H,1,1)``, ``(1,1,q,1)``, ``(1,1,1,kv)`` indices -> ``(B,H,q,kv)`` bool."""
    def arange(length: int, dim: int) -> torch.Tensor:
        shape = [1, 1, 1, 1]
        shape[dim] = length
        return torch.arange(length, device=device).view(shape)

    try:
        dense = mask_mod(arange(batch, 0), arange(heads, 1), arange(query_len, 2), arange(key_len, 3))
        if not isinstance(dense, torch.Tensor) or dense.dtype != torch.bool or dense.dim() > 4:
            return None
        return dense.expand(batch, heads, query_len, key_len)
    except (RuntimeError, IndexError, TypeError, ValueError):  # written for scalars only: vmap it instead
        return None


def block_mask_from_dense(dense: torch.Tensor, mask_mod, block_size):
    """Cut a ``(B, H, q, kv)`` bool mask into blocks: full blocks, partial ones (``mask_mod`` applies inside)."""
    q_block, kv_block = (block_size, block_size) if isinstance(block_size, int) else block_size
    batch, heads, query_len, key_len = dense.shape
    q_blocks, kv_blocks = -(-query_len // q_block), -(-key_len // kv_block)
    padded = F.pad(dense, (0, kv_blocks * kv_block - key_len, 0, q_blocks * q_block - query_len))
    tiles = padded.reshape(batch, heads, q_blocks, q_block, kv_blocks, kv_block)
    full = tiles.all(dim=5).all(dim=3)  # an edge block holding padding is never full: it stays partial
    partial = tiles.any(dim=5).any(dim=3) & ~full
    partial_count, partial_indices = _sparse_rows(partial)
    full_count, full_indices = _sparse_rows(full)
    from torch.nn.attention.flex_attention import BlockMask

    return BlockMask.from_kv_blocks(partial_count, partial_indices, full_count, full_indices, BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod, seq_lengths=(query_len, key_len))


def _sparse_rows(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query block: how many key blocks are set, and their indices first (ascending), as int32."""
    count = blocks.sum(dim=-1, dtype=torch.int32)
    order = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True)
    return count, order.to(torch.int32)
