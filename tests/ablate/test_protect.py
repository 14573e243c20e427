"""Protected random-LTD: special positions always kept, the rest uniform, nothing left after removal."""
from __future__ import annotations

import pytest
import torch

import random_ltd
import zoo
from random_ltd import ops
from random_ltd.ablate.protect import protect_special_tokens, unprotect
from random_ltd.errors import RandomLTDError

SPECIAL = (3, 5)


def kept_positions(monkeypatch, model, inputs, keep) -> list[torch.Tensor]:
    """The (B, keep) positions each dropping layer kept in one forward pass."""
    seen = []
    flat_indices = ops.flat_indices

    def spy(indices, seq_len):
        seen.append(indices.clone())
        return flat_indices(indices, seq_len)

    monkeypatch.setattr(ops, "flat_indices", spy)
    model(**inputs)
    assert len(seen) == 2 and all(kept.shape == (zoo.BATCH, keep) for kept in seen)  # layers 1 and 2
    return seen


def special_batch(gen):
    ids = torch.randint(6, zoo.VOCAB, (zoo.BATCH, zoo.SEQ), generator=gen)
    ids[:, 0], ids[:, 7], ids[:, 15] = 3, 5, 5
    return {"input_ids": ids}


def test_special_positions_always_kept_and_others_spread(monkeypatch):
    torch.manual_seed(0)
    model = zoo.bert().train()
    random_ltd.apply(model, "1:-1", keep=5, seed=1)
    protect_special_tokens(model, SPECIAL)
    counts = torch.zeros(zoo.SEQ)
    for step in range(60):
        for kept in kept_positions(monkeypatch, model, special_batch(torch.Generator().manual_seed(step)), 5):
            assert {0, 7, 15} <= set(kept[0].tolist())
            assert (kept.diff(dim=1) > 0).all()  # sorted, distinct
            counts += torch.bincount(kept.reshape(-1), minlength=zoo.SEQ)
    others = torch.tensor([p for p in range(zoo.SEQ) if p not in (0, 7, 15)])
    expected = counts[others].sum() / len(others)
    assert ((counts[others] - expected).abs() < 0.25 * expected).all()  # two of 13 each time, evenly


def test_same_seed_same_indices_and_plain_random_ltd_without_specials(monkeypatch):
    inputs = {"input_ids": torch.randint(6, zoo.VOCAB, (zoo.BATCH, zoo.SEQ), generator=torch.Generator().manual_seed(3))}
    runs = []
    for protect in (False, True):
        torch.manual_seed(0)
        model = zoo.bert().train()
        random_ltd.apply(model, "1:-1", keep=5, seed=1)
        if protect:
            protect_special_tokens(model, SPECIAL)
        runs.append(kept_positions(monkeypatch, model, inputs, 5))
    # no special id in the batch: protected random-LTD draws exactly what random-LTD draws
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_needs_random_ltd_and_unprotect_then_remove_restores_classes():
    model = zoo.bert()
    with pytest.raises(RandomLTDError, match="apply random-LTD first"):
        protect_special_tokens(model, SPECIAL)
    classes = [type(m) for m in model.modules()]
    random_ltd.apply(model, "1:-1", keep=5)
    wrapped = [type(m) for m in model.modules()]
    protect_special_tokens(model, SPECIAL)
    unprotect(model)
    assert [type(m) for m in model.modules()] == wrapped
    assert len(model._forward_pre_hooks) == 1  # random-LTD's own forward counter only
    random_ltd.remove(model)
    assert [type(m) for m in model.modules()] == classes
    with pytest.raises(RandomLTDError, match="not protected"):
        unprotect(model)
