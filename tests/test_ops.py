"""Pure tensor operations: kept-subset statistics, exact scatter, mask and position gathering."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from random_ltd import ops


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _uniform_subsets(batch: int, seq: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    """What a dropping layer keeps: the top ``keep`` of i.i.d. uniform keys (``ops.keep_top``)."""
    return ops.keep_top(torch.rand(batch, seq, generator=generator), keep)


@pytest.mark.parametrize("batch,seq,keep", [(4, 16, 5), (3, 197, 66), (2, 8, 8), (5, 10, 1)])
def test_kept_indices_are_sorted_unique_in_range(batch, seq, keep):
    indices = _uniform_subsets(batch, seq, keep, _gen())
    assert indices.shape == (batch, keep) and indices.dtype == torch.int64
    assert (indices[:, 1:] > indices[:, :-1]).all()
    assert indices.min() >= 0 and indices.max() < seq


def test_kept_indices_reproducible_and_different_across_sequences():
    a = _uniform_subsets(8, 64, 16, _gen(3))
    b = _uniform_subsets(8, 64, 16, _gen(3))
    c = _uniform_subsets(8, 64, 16, _gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(row.tolist()) for row in a}) == 8


def test_every_subset_equally_likely():
    """Chi-square over all C(6,3) = 20 subsets, 20k draws (p ~ 1e-4 to fail by chance)."""
    draws = _uniform_subsets(20_000, 6, 3, _gen(11))
    subsets = list(itertools.combinations(range(6), 3))
    index = {subset: i for i, subset in enumerate(subsets)}
    counts = torch.zeros(len(subsets))
    for row in draws.tolist():
        counts[index[tuple(row)]] += 1
    expected = draws.shape[0] / len(subsets)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 50.0, chi2  # 19 degrees of freedom: P(chi2 > 50) ~ 1e-4


def test_position_inclusion_is_uniform():
    draws = _uniform_subsets(10_000, 11, 4, _gen(5))
    counts = torch.bincount(draws.reshape(-1), minlength=11).float()
    p = 4 / 11
    expected = 10_000 * p
    sd = math.sqrt(10_000 * p * (1 - p))
    assert ((counts - expected).abs() < 5 * sd).all(), counts


def test_gather_then_scatter_is_exact_and_differentiable():
    hidden = torch.randn(3, 10, 4, dtype=torch.float64, requires_grad=True)
    indices = _uniform_subsets(3, 10, 4, _gen(1))
    flat = ops.flat_indices(indices, 10)
    kept = ops.gather_tokens(hidden, flat, 4)
    for b in range(3):
        assert torch.equal(kept[b], hidden[b, indices[b]])
    layer_out = kept * 2.0 + 1.0
    merged = ops.scatter_tokens(hidden, layer_out, flat)
    kept_mask = torch.zeros(3, 10, dtype=torch.bool)
    kept_mask.scatter_(1, indices, True)
    assert torch.equal(merged[~kept_mask], hidden[~kept_mask])
    assert torch.equal(merged[kept_mask], (hidden * 2.0 + 1.0)[kept_mask])
    weights = torch.randn(3, 10, 4, dtype=torch.float64)
    (merged * weights).sum().backward()
    expected = torch.where(kept_mask[..., None], 2.0 * weights, weights)
    assert torch.allclose(hidden.grad, expected)


def test_scatter_does_not_modify_its_input():
    hidden = torch.randn(2, 6, 3)
    before = hidden.clone()
    flat = ops.flat_indices(torch.tensor([[0, 2], [1, 5]]), 6)
    ops.scatter_tokens(hidden, torch.zeros(2, 2, 3), flat)
    assert torch.equal(hidden, before)


def _loop_gather_mask(mask, indices, seq):
    out = []
    for b in range(indices.shape[0]):
        m = mask[min(b, mask.shape[0] - 1)]
        idx = indices[b]
        m = m[..., idx]
        if m.shape[-2] == seq:
            m = m[..., idx, :]
        out.append(m)
    return torch.stack(out)


@pytest.mark.parametrize(
    "shape,dtype",
    [((3, 1, 9, 9), torch.bool), ((1, 1, 9, 9), torch.float32), ((3, 1, 1, 9), torch.bool),
     ((3, 2, 9, 9), torch.float32), ((3, 9, 9), torch.bool)],
)
def test_gather_mask_matches_loop(shape, dtype):
    mask = torch.rand(shape, generator=_gen(2)) > 0.5
    mask = mask if dtype == torch.bool else torch.where(mask, 0.0, torch.finfo(dtype).min)
    indices = _uniform_subsets(3, 9, 4, _gen(9))
    assert torch.equal(ops.gather_mask(mask, indices), _loop_gather_mask(mask, indices, 9))


def test_gather_sequence_positions_and_rotary():
    indices = torch.tensor([[0, 3], [1, 2]])
    positions = torch.arange(5).unsqueeze(0)
    assert torch.equal(ops.gather_sequence(positions, indices), indices)
    cos = torch.randn(1, 5, 6)
    gathered = ops.gather_sequence(cos, indices)
    assert gathered.shape == (2, 2, 6)
    assert torch.equal(gathered[1], cos[0, [1, 2]])


def test_attend_somewhere_releases_only_empty_rows():
    keep_mask = torch.tensor([[[[True, False, False], [False, False, False], [False, False, True]]]])
    fixed = ops.attend_somewhere(keep_mask)
    assert fixed[0, 0, 1].tolist() == [False, True, False]
    assert torch.equal(fixed[0, 0, [0, 2]], keep_mask[0, 0, [0, 2]])
    additive = torch.where(keep_mask, 0.0, float("-inf"))
    fixed = ops.attend_somewhere(additive)
    assert fixed[0, 0, 1].tolist() == [float("-inf"), 0.0, float("-inf")]
    blocked = ~keep_mask
    assert torch.equal(ops.attend_somewhere(blocked, bool_means_keep=False), ~ops.attend_somewhere(keep_mask))
    key_only = torch.tensor([[[[False, False]]], [[[True, False]]]])
    assert ops.attend_somewhere(key_only).tolist() == [[[[True, True]]], [[[True, False]]]]
    padding = torch.tensor([[0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    assert ops.attend_somewhere(padding).tolist() == [[True, True, True], [True, False, True]]


def test_two_dimensional_mask_is_a_padding_mask_even_when_batch_equals_seq():
    mask = torch.rand(4, 4, generator=_gen(0)) > 0.3
    indices = _uniform_subsets(4, 4, 2, _gen(1))
    assert torch.equal(ops.gather_mask(mask, indices), torch.stack([mask[b, indices[b]] for b in range(4)]))


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_shared_square_mask_is_gathered_per_sequence(dtype):
    """A shared ``(s, s)`` mask becomes ``(B, 1, k, k)``: each sequence's kept queries and keys."""
    mask = torch.rand(9, 9, generator=_gen(3)) > 0.5
    mask = mask if dtype == torch.bool else torch.where(mask, 0.0, torch.finfo(dtype).min)
    indices = _uniform_subsets(3, 9, 4, _gen(4))
    expected = torch.stack([mask[indices[b]][:, indices[b]] for b in range(3)]).unsqueeze(1)
    assert torch.equal(ops.gather_mask(mask, indices), expected)


def test_two_dimensional_mask_of_neither_form_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(5, 9\).*\(B, s\) padding mask.*\(s, s\)"):
        ops.gather_mask(torch.ones(5, 9, dtype=torch.bool), _uniform_subsets(3, 9, 4, _gen(4)))
