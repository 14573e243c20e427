"""``split_tokens``/``merge_tokens`` compute exactly what ``gather_tokens``/``scatter_tokens`` compute,
forward and backward, bit for bit (they exist only to build the input's gradient in one pass)."""
from __future__ import annotations

import pytest
import torch
import zoo

from random_ltd import ops


def _setup(batch, seq, width, keep, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq, width, dtype=dtype, generator=gen)
    weight = torch.randn(width, width, dtype=dtype, generator=gen)
    upstream = torch.randn(batch, seq, width, dtype=dtype, generator=gen)
    indices = zoo.sample_indices(batch, seq, keep, generator=gen)
    return hidden, weight, upstream, ops.flat_indices(indices, seq)


def _reference(hidden, weight, flat, keep, extra_use):
    kept = ops.gather_tokens(hidden, flat, keep)
    out = ops.scatter_tokens(hidden, torch.tanh(kept @ weight), flat)
    return out + 0.5 * hidden if extra_use else out


def _fused(hidden, weight, flat, keep, extra_use):
    kept, passthrough = ops.split_tokens(hidden, flat, keep)
    out = ops.merge_tokens(passthrough, torch.tanh(kept @ weight), flat)
    return out + 0.5 * hidden if extra_use else out


def _run(fn, hidden, weight, upstream, flat, keep, extra_use):
    hidden = hidden.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    out = fn(hidden, weight, flat, keep, extra_use)
    out.backward(upstream)
    return out.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("batch, seq, width, keep", [(1, 8, 4, 1), (3, 10, 4, 4), (2, 33, 5, 32), (4, 16, 3, 16)])
@pytest.mark.parametrize("extra_use", [False, True], ids=["only-layer", "input-also-used-elsewhere"])
def test_same_output_and_gradients_bit_for_bit(batch, seq, width, keep, extra_use):
    tensors = _setup(batch, seq, width, keep, seed=batch * 100 + keep)
    reference = _run(_reference, *tensors, keep, extra_use)
    fused = _run(_fused, *tensors, keep, extra_use)
    for ref, got in zip(reference, fused, strict=True):
        assert torch.equal(ref, got)


def test_sequence_first_input_and_dtype_cast():
    hidden, weight, upstream, flat = _setup(3, 12, 4, 5, seed=7)
    seq_first = hidden.transpose(0, 1).contiguous().requires_grad_(True)
    tokens = seq_first.transpose(0, 1)  # non-contiguous (B, s, d) view, as for batch_first=False layers
    kept, passthrough = ops.split_tokens(tokens, flat, 5)
    out = ops.merge_tokens(passthrough, (kept @ weight).float(), flat)  # layer output in a lower precision
    assert out.dtype == torch.float64
    expected = ops.scatter_tokens(tokens, (ops.gather_tokens(tokens, flat, 5) @ weight).float(), flat)
    assert torch.equal(out, expected)
    out.backward(upstream)
    reference = seq_first.detach().clone().requires_grad_(True)
    ref_tokens = reference.transpose(0, 1)
    ops.scatter_tokens(ref_tokens, (ops.gather_tokens(ref_tokens, flat, 5) @ weight).float(), flat).backward(upstream)
    assert torch.equal(seq_first.grad, reference.grad)


def test_gradcheck_and_no_input_gradient_needed():
    hidden, weight, _, flat = _setup(2, 6, 3, 3, seed=3)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h, w: _fused(h, w, flat, 3, False), (hidden, weight))
    frozen = hidden.detach()
    _fused(frozen, weight, flat, 3, False).sum().backward()  # only the layer's weight needs a gradient
    assert frozen.grad is None and weight.grad is not None
