"""Gradient checkpointing replays a layer's forward during backward: the replay must draw the
tokens of the forward it replays, for any order of forwards and backwards."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.utils.checkpoint as checkpoint
import zoo

import random_ltd

torch.set_num_threads(1)


class CheckpointedEncoder(nn.Module):
    """``torch.utils.checkpoint`` called directly around each layer (no Hugging Face)."""

    def __init__(self, reentrant: bool | None):
        super().__init__()
        self.reentrant = reentrant
        self.embed = nn.Embedding(zoo.VOCAB, 32)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(32, 2, 64, batch_first=True) for _ in range(4))
        self.head = nn.Linear(32, zoo.VOCAB)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x) if self.reentrant is None else checkpoint.checkpoint(layer, x, use_reentrant=self.reentrant)
        return self.head(x)


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, zoo.VOCAB, (2, zoo.SEQ), generator=torch.Generator().manual_seed(seed))


def _loss(model, seed: int) -> torch.Tensor:
    ids = _ids(seed)
    out = model(ids)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())


def _sum_of_three(model):
    sum(_loss(model, seed) for seed in (1, 2, 3)).backward()


def _interleaved(model):
    """forward A, forward B, backward B, backward A."""
    first, second = _loss(model, 1), _loss(model, 2)
    second.backward()
    first.backward()


def _accumulated(model):
    """Gradient accumulation with checkpointing, one backward per forward (worked before too)."""
    for seed in (1, 2):
        _loss(model, seed).backward()


SCENARIOS = {"sum-of-three": _sum_of_three, "interleaved": _interleaved, "accumulated": _accumulated}


def _hf(name: str, reentrant: bool | None):
    model = getattr(zoo, name)()
    if reentrant is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    return model


MODELS = {
    "llama-hf": lambda reentrant: _hf("llama", reentrant),
    "gpt2-hf": lambda reentrant: _hf("gpt2", reentrant),
    "torch-checkpoint": CheckpointedEncoder,
}


def _grads(build, reentrant, scenario) -> dict:
    torch.manual_seed(0)
    model = build(reentrant).train()
    random_ltd.apply(model, keep=6, seed=11)
    torch.manual_seed(1)  # both runs start from the same default stream
    SCENARIOS[scenario](model)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
@pytest.mark.parametrize("model", list(MODELS))
def test_checkpointed_gradients_equal_uncheckpointed(model, reentrant, scenario):
    reference = _grads(MODELS[model], None, scenario)
    replayed = _grads(MODELS[model], reentrant, scenario)
    assert replayed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(replayed[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_dropping_changes_the_gradients_the_comparison_sees():
    """The comparison above can fail: other draws give other gradients."""
    dropping = _grads(MODELS["llama-hf"], None, "sum-of-three")
    torch.manual_seed(0)
    model = MODELS["llama-hf"](None).train()
    random_ltd.apply(model, keep=6, seed=12)  # another seed
    torch.manual_seed(1)
    _sum_of_three(model)
    other = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert any(not torch.allclose(other[name], dropping[name]) for name in dropping)


def test_deepcopy_before_apply_leaves_checkpointing_state_alone():
    model = _hf("llama", False).train()
    copy.deepcopy(model)
    random_ltd.apply(model, keep=6, seed=1)
    _interleaved(model)
