"""Hybrid convolution / state-space decoders are refused at apply, the model left as it was.

Their mixers (Mamba, short convolutions, gated delta-nets) mix *adjacent* tokens: run on
non-adjacent kept tokens they compute another layer, and their caches are not attention caches.
"""
from __future__ import annotations

import pytest
import torch
import zoo

import random_ltd

torch.set_num_threads(1)


@pytest.mark.parametrize("build", zoo.HYBRIDS, ids=lambda f: f.__name__)
def test_hybrid_decoders_are_refused_at_apply_and_left_untouched(build):
    model = build().train()
    classes = [type(module) for module in model.modules()]
    state = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(random_ltd.RandomLTDError, match="convolution or state-space"):
        random_ltd.apply(model, keep=8)
    assert [type(module) for module in model.modules()] == classes
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())
    random_ltd.apply(zoo.llama(), keep=8)  # nothing left behind in the registry either


def test_the_refusal_names_the_mixer():
    with pytest.raises(random_ltd.RandomLTDError, match="BambaMixer"):
        random_ltd.apply(zoo.bamba(), keep=8)
    with pytest.raises(random_ltd.RandomLTDError, match="Lfm2ShortConv"):
        random_ltd.apply(zoo.lfm2(), keep=8)
