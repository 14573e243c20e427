"""Swapped classes survive pickling: ``torch.save(model)`` / ``torch.load`` and ``copy.deepcopy``."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import zoo

import random_ltd


def _ids():
    return torch.randint(0, zoo.VOCAB, (2, zoo.SEQ), generator=torch.Generator().manual_seed(0))


def _saved_and_loaded(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _encoder():
    return zoo.TorchEncoderLM(batch_first=False)


@pytest.mark.parametrize("round_trip", [_saved_and_loaded, copy.deepcopy], ids=["torch.save", "deepcopy"])
@pytest.mark.parametrize("build", [zoo.gpt2, zoo.llama, zoo.bert, _encoder], ids=["gpt2", "llama", "bert", "torch"])
def test_round_trip_gives_an_equal_model_that_still_drops(round_trip, build):
    torch.manual_seed(0)
    model = build().train()
    handle = random_ltd.apply(model, keep=5, seed=8, protect_ids=(3,))
    copied = round_trip(model)
    copied_handle = random_ltd.get_handle(copied)
    assert copied_handle is not None and copied_handle is not handle and copied_handle.model is copied
    assert [type(m) for m in copied.modules()] == [type(m) for m in model.modules()]
    assert copied_handle.state_dict() == handle.state_dict()
    for (name, p), q in zip(model.state_dict().items(), copied.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    torch.manual_seed(1)
    ours = model(_ids()).logits
    torch.manual_seed(1)
    theirs = copied(_ids()).logits
    assert torch.equal(ours, theirs)
    copied_handle.set_keep(None)
    assert handle.keep == 5, "the copy's handle drives the copy only"
    torch.manual_seed(1)
    assert not torch.equal(copied(_ids()).logits, ours), "the copy dropped before, and no longer does"
    random_ltd.remove(copied)
    assert [type(m) for m in copied.modules()] == [type(m) for m in build().modules()]
