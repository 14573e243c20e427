"""Gradient checkpointing replays a layer's forward during backward: the replay must draw the
tokens of the forward it replays, for any order of forwards and backwards, and strategies that
read the model's inputs must see the context of the forward it replays."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.utils.checkpoint as checkpoint
import zoo

import random_ltd
from random_ltd import contexts, tokenbypass
from random_ltd.strategies import Strategy

torch.set_num_threads(1)
SPECIAL = (3, 5)


class KeepByIds(Strategy):
    """A toy strategy reading the model's inputs: keeps the positions whose ids hash highest per layer."""

    needs_context = True

    def begin_forward(self, inputs, keep):
        return inputs["input_ids"]

    def select(self, layer, tokens, keep, input_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        keys = (input_ids * 31 + layer.position * 7) % zoo.VOCAB * input_ids.shape[1] + positions
        return keys.topk(keep, dim=1).indices.sort(dim=1).values


METHODS = {
    "random-ltd": lambda model: random_ltd.apply(model, keep=6, seed=11),
    "protect_ids": lambda model: random_ltd.apply(model, keep=6, seed=11, protect_ids=SPECIAL),
    "tokenbypass": lambda model: tokenbypass.apply(model, "1:3", keep=6, special_ids=SPECIAL, vocab_size=zoo.VOCAB),
    "toy-strategy": lambda model: random_ltd.apply(model, keep=6, strategy=KeepByIds()),
}


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
    """Random ids, with special ids at positions that differ from forward to forward."""
    ids = torch.randint(6, zoo.VOCAB, (2, zoo.SEQ), generator=torch.Generator().manual_seed(seed))
    ids[:, seed], ids[:, 2 * seed + 5] = 3, 5
    return ids


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


def _evaluated_in_between(model):
    """forward A, an evaluation forward (nothing drops), backward A."""
    loss = _loss(model, 1)
    model.eval()
    with torch.no_grad():
        _loss(model, 2)
    model.train()
    loss.backward()


SCENARIOS = {"sum-of-three": _sum_of_three, "interleaved": _interleaved, "accumulated": _accumulated,
             "evaluated-in-between": _evaluated_in_between}


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


def _grads(build, reentrant, scenario, method="random-ltd") -> dict:
    torch.manual_seed(0)
    model = build(reentrant).train()
    METHODS[method](model)
    torch.manual_seed(1)  # both runs start from the same default stream
    SCENARIOS[scenario](model)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
@pytest.mark.parametrize("model", list(MODELS))
def test_checkpointed_gradients_equal_uncheckpointed(model, reentrant, scenario, method):
    reference = _grads(MODELS[model], None, scenario, method)
    replayed = _grads(MODELS[model], reentrant, scenario, method)
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


@pytest.mark.parametrize("method", ["protect_ids", "tokenbypass", "toy-strategy"])
def test_a_replay_given_the_latest_context_would_change_the_gradients(method, monkeypatch):
    """The comparison above can fail: replays that read the latest forward's context differ."""
    reference = _grads(MODELS["llama-hf"], None, "interleaved", method)

    def latest(self, position, hidden):
        return self.current

    monkeypatch.setattr(contexts.ForwardContexts, "for_layer", latest)
    replayed = _grads(MODELS["llama-hf"], False, "interleaved", method)
    assert any(not torch.allclose(replayed[name], reference[name]) for name in reference)


def test_deepcopy_before_apply_leaves_checkpointing_state_alone():
    model = _hf("llama", False).train()
    copy.deepcopy(model)
    random_ltd.apply(model, keep=6, seed=1)
    _interleaved(model)
