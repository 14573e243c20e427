"""Pure tensor operations of random-LTD: choose, gather, scatter.

Shapes: ``B`` sequences of length ``s``, hidden size ``d``, ``k`` kept tokens per sequence.
Index tensors are ``(B, k)`` int64, sorted ascending along dim 1. Every function here is
vectorised over the batch and is free of hidden state: the same indices are passed to every
gather so that tokens, masks and positions stay aligned.
"""
from __future__ import annotations

import torch

__all__ = [
    "keep_top",
    "flat_indices",
    "gather_tokens",
    "scatter_tokens",
    "split_tokens",
    "merge_tokens",
    "gather_sequence",
    "gather_mask",
    "gather_table_tail",
    "attend_somewhere",
]


def keep_top(keys: torch.Tensor, keep: int) -> torch.Tensor:
    """The positions of the ``keep`` largest of ``(B, s)`` keys, sorted ascending: ``(B, keep)`` int64.

    With i.i.d. keys this is a uniform ``keep``-subset. Sorting keeps the relative order of
    tokens, which is what makes a causal layer on the subsequence causal again.
    """
    return keys.topk(keep, dim=1, sorted=False).indices.sort(dim=1).values


def flat_indices(indices: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``(B, k)`` per-sequence indices -> ``(B*k,)`` rows of a ``(B*s, ...)`` flattened tensor."""
    offsets = torch.arange(indices.shape[0], device=indices.device).unsqueeze(1) * seq_len
    return (indices + offsets).reshape(-1)


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """``(B, s, *rest)`` -> ``(B*s, *rest)``: the rows that flat indices address."""
    return tensor.reshape(tensor.shape[0] * tensor.shape[1], *tensor.shape[2:])


def gather_tokens(hidden: torch.Tensor, flat_idx: torch.Tensor, keep: int) -> torch.Tensor:
    """``(B, s, d)`` -> ``(B, k, d)``: the kept tokens, in index order."""
    rows = _rows(hidden).index_select(0, flat_idx)
    return rows.reshape(hidden.shape[0], keep, *hidden.shape[2:])


def scatter_tokens(hidden: torch.Tensor, kept_out: torch.Tensor, flat_idx: torch.Tensor) -> torch.Tensor:
    """Write the layer's ``(B, k, d)`` output into a copy of its ``(B, s, d)`` input.

    Dropped positions carry their input bit for bit. One out-of-place ``index_copy``: a single
    full-size allocation (the output), no clone-then-write; autograd routes the gradient of
    kept rows to ``kept_out`` and of dropped rows to ``hidden``.
    """
    source = kept_out.reshape(-1, *hidden.shape[2:]).to(hidden.dtype)
    return _rows(hidden).index_copy(0, flat_idx, source).reshape(hidden.shape)


def split_tokens(hidden: torch.Tensor, flat_idx: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``gather_tokens`` for a layer whose output goes back through ``merge_tokens``.

    Returns the ``(B, k, d)`` kept tokens and ``passthrough``, an alias of ``hidden`` that must
    go to ``merge_tokens`` and nowhere else. The forward calls ``gather_tokens`` and
    ``scatter_tokens``; only the backward differs, with the same result bit for bit: the
    input's gradient is built in one pass (the output's gradient with the kept rows replaced)
    instead of a zero-filled scatter, an index-filled copy and their sum, three full-size
    tensors fewer per layer.
    """
    return _Split.apply(hidden, flat_idx, keep)


def merge_tokens(passthrough: torch.Tensor, kept_out: torch.Tensor, flat_idx: torch.Tensor) -> torch.Tensor:
    """``scatter_tokens`` for the ``passthrough`` of ``split_tokens``; same output, bit for bit."""
    return _Merge.apply(passthrough, kept_out.to(passthrough.dtype), flat_idx)


class _Split(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, flat_idx, keep):
        ctx.save_for_backward(flat_idx)
        return gather_tokens(hidden, flat_idx, keep), hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, grad_kept, grad_passthrough):
        # grad_passthrough comes from _Merge untouched: right for dropped rows, and the kept
        # rows (which the merge overwrote) get their gradient from the kept tokens instead.
        (flat_idx,) = ctx.saved_tensors
        rest = grad_passthrough.shape[2:]
        merged = _rows(grad_passthrough).index_copy(0, flat_idx, grad_kept.reshape(-1, *rest))
        return merged.reshape(grad_passthrough.shape), None, None


class _Merge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, passthrough, kept_out, flat_idx):
        ctx.save_for_backward(flat_idx)
        ctx.kept_shape = kept_out.shape
        return scatter_tokens(passthrough, kept_out, flat_idx)

    @staticmethod
    def backward(ctx, grad_out):
        (flat_idx,) = ctx.saved_tensors
        grad_kept = _rows(grad_out).index_select(0, flat_idx).reshape(ctx.kept_shape)
        return grad_out, grad_kept, None


def gather_sequence(values: torch.Tensor, indices: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Gather a per-token tensor (positions, rotary cos/sin, 2-D padding masks) along ``dim``.

    ``values`` has the sequence at ``dim`` and a batch of ``B`` or 1 at dim 0 (broadcast to
    ``B``); trailing dims are kept. ``(B or 1, s, *rest)`` -> ``(B, k, *rest)``.
    """
    batch, keep = indices.shape
    values = values.expand(batch, *values.shape[1:])
    shape = [batch] + [1] * (values.dim() - 1)
    shape[dim] = keep
    index = indices.reshape(shape).expand(*values.shape[:dim], keep, *values.shape[dim + 1 :])
    return values.gather(dim, index)


def gather_table_tail(table: torch.Tensor, indices: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Gather the last ``seq_len`` rows of an unbatched per-token table ``(t + s, *rest)``.

    The first ``t`` rows (another stream's tokens, e.g. Flux's text before its image) are kept
    as they are; ``indices`` ``(k,)`` pick among the last ``s``. Returns ``(t + k, *rest)``.
    """
    head = table.shape[0] - seq_len
    return torch.cat([table[:head], table[head:].index_select(0, indices)])


def gather_mask(mask: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Gather an attention mask ``(B or 1, *heads, q, s)`` to the kept tokens.

    Covers Hugging Face 4-D masks ``(B, 1, s, s)`` and ``(B, 1, 1, s)``, boolean or additive,
    and 3-D ``(B, q, s)`` masks. The key dimension is always gathered; the query dimension when
    it spans the sequence (``q == s``). A 2-D mask whose rows are the batch (or one row) is a
    ``(B, s)`` padding mask (flash attention's form), also when ``B == s``; any other square
    ``(s, s)`` mask is shared by the batch and becomes ``(B, 1, k, k)``, which broadcasts over
    heads as the shared mask did (pass a shared mask as ``(1, 1, s, s)`` when ``B == s``).
    """
    if mask.dim() == 2:
        return _gather_two_dimensional(mask, indices)
    seq_len = mask.shape[-1]
    if mask.shape[-2] == seq_len and seq_len > 1:
        mask = gather_sequence(mask, indices, dim=mask.dim() - 2)
    return gather_sequence(mask, indices, dim=mask.dim() - 1)


def _gather_two_dimensional(mask: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    if mask.shape[0] in (1, indices.shape[0]):
        return gather_sequence(mask, indices, dim=1)
    if mask.shape[0] == mask.shape[1]:
        return gather_mask(mask[None, None], indices)
    raise ValueError(f"a 2-D attention mask of shape {tuple(mask.shape)} is neither a (B, s) padding mask for "
                     f"{indices.shape[0]} sequences nor a shared (s, s) mask")


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An additive attention mask of ``dtype``: 0 where ``allowed`` (bool), the dtype's minimum elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def attend_somewhere(mask: torch.Tensor, bool_means_keep: bool = True) -> torch.Tensor:
    """Make every query row of a gathered mask attend to at least one key.

    A row whose kept keys are all blocked (heavy padding, few kept tokens) can only belong to
    a padding token, whose output is never used, yet it turns into NaN in the softmax and
    poisons the backward pass. Such a row attends to its own token (the diagonal) in square
    masks and to every key otherwise (2-D padding masks: every key). Boolean masks follow
    ``bool_means_keep`` (Hugging Face: True = attend; PyTorch ``nn.MultiheadAttention``: True =
    blocked); float masks are additive, a value at or below half the dtype's minimum counting as
    blocked. No host sync.
    """
    if mask.dtype == torch.bool:
        blocked = ~mask if bool_means_keep else mask
    else:
        blocked = mask <= torch.finfo(mask.dtype).min / 2
    release = blocked.all(dim=-1, keepdim=True)
    if mask.dim() >= 3 and mask.shape[-1] == mask.shape[-2]:
        release = release & torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    if mask.dtype == torch.bool:  # Python scalars, not tensors made on the host: no copy to the device
        return mask | release if bool_means_keep else mask & ~release
    return mask.masked_fill(release, 0.0)
