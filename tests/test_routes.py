"""Routes: one kept subset through a span of layers, split at its first layer, merged at its last.

The reference is the one-layer mechanism (proven against the original layers in test_layer.py)
keeping the same positions in every layer of the span: gathering, running and merging in each
layer computes the same numbers as carrying the kept tokens through, bit for bit.
"""
from __future__ import annotations

import copy

import pytest
import torch
import zoo

import random_ltd
from random_ltd import ops
from random_ltd.routes import Route, RouteStep
from random_ltd.strategies import Strategy

torch.set_num_threads(1)
CASES = {case.name: case for case in zoo.CASES}
FAMILIES = ["gpt2-eager-pad", "llama-sdpa-pad", "bert-sdpa-pad", "llama-sdpa-packed", "torch-encoder-pad",
            "nanogpt-block"]


class ToyRoute(Strategy):
    """A toy span strategy: one uniform subset per forward, drawn at ``first``, carried to ``last``."""

    needs_context = True
    routes = True

    def __init__(self, first: int, last: int):
        self.first, self.last = first, last
        self.drawn: list[torch.Tensor] = []

    def begin_forward(self, inputs, keep):
        return {}  # this forward's route, made by its first layer

    def select(self, layer, tokens, keep, routes):
        if not self.first <= layer.position <= self.last:
            return None
        if layer.position == self.first and "route" not in routes:  # a replay finds the route drawn before
            batch, seq_len = tokens.shape[:2]
            indices = torch.rand(batch, seq_len).argsort(dim=1)[:, :keep].sort(dim=1).values
            routes["route"] = Route(indices)
            self.drawn.append(indices)
        return RouteStep(routes["route"], first=layer.position == self.first, last=layer.position == self.last)


class SameIndices(Strategy):
    """The reference: every dropping layer keeps the given positions (gather, run, merge per layer)."""

    def __init__(self, drawn: list[torch.Tensor]):
        self.drawn, self.calls = drawn, 0

    def select(self, layer, tokens, keep, context):
        return self.drawn[self.calls // 2]


def _build(name: str):
    torch.manual_seed(0)
    case = CASES[name]
    return case, case.build().train()


def _run(case, model, forwards=2):
    model.zero_grad(set_to_none=True)
    losses = [case.loss(model, case.inputs(torch.Generator().manual_seed(seed))) for seed in range(forwards)]
    sum(losses).backward()
    return [loss.detach() for loss in losses], {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _route_and_reference(name: str, checkpointing: bool = False):
    case, model = _build(name)
    reference = copy.deepcopy(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    toy = ToyRoute(1, 2)
    random_ltd.apply(model, "1:3", keep=case.seq_len // 2, strategy=toy)
    torch.manual_seed(5)
    routed = _run(case, model)
    same = SameIndices(toy.drawn)
    random_ltd.apply(reference, "1:3", keep=case.seq_len // 2, strategy=same)
    original_select = same.select

    def counting(*args):
        indices = original_select(*args)
        same.calls += 1
        return indices

    same.select = counting
    return routed, _run(case, reference), toy


@pytest.mark.parametrize("name", FAMILIES)
def test_a_route_equals_the_same_positions_dropped_layer_by_layer(name):
    (losses, grads), (ref_losses, ref_grads), toy = _route_and_reference(name)
    assert len(toy.drawn) == 2, "one draw per route and forward"
    assert all(torch.equal(a, b) for a, b in zip(losses, ref_losses, strict=True))
    assert grads.keys() == ref_grads.keys()
    for param in grads:
        assert torch.equal(grads[param], ref_grads[param]), param


def test_a_route_under_non_reentrant_checkpointing_gives_the_same_gradients():
    (losses, grads), (ref_losses, ref_grads), _ = _route_and_reference("llama-sdpa-pad", checkpointing=True)
    assert all(torch.equal(a, b) for a, b in zip(losses, ref_losses, strict=True))
    for param in grads:
        torch.testing.assert_close(grads[param], ref_grads[param], rtol=1e-6, atol=1e-7, msg=param)


def test_dropped_tokens_skip_the_route_and_its_inner_layer_runs_on_kept_tokens_only():
    case, model = _build("gpt2-eager-pad")
    toy = ToyRoute(1, 2)
    random_ltd.apply(model, "1:3", keep=6, strategy=toy)
    seen = {}
    layers = model.transformer.h
    layers[1].register_forward_pre_hook(lambda m, args: seen.setdefault("in", args[0]))
    layers[2].register_forward_pre_hook(lambda m, args: seen.setdefault("inner", args[0]))
    layers[2].register_forward_hook(lambda m, args, out: seen.setdefault("out", out))
    case.loss(model, case.inputs(torch.Generator().manual_seed(0)))
    (indices,) = toy.drawn
    dropped = torch.ones(zoo.BATCH, zoo.SEQ, dtype=torch.bool).scatter_(1, indices, False)
    assert seen["inner"].shape == (zoo.BATCH, 6, 32)
    assert seen["out"].shape == seen["in"].shape
    assert torch.equal(seen["out"][dropped], seen["in"][dropped])


def test_masks_and_positions_are_gathered_once_per_route(monkeypatch):
    case, model = _build("llama-sdpa-pad")
    random_ltd.apply(model, "1:3", keep=6, strategy=ToyRoute(1, 2))
    calls = []
    original = ops.gather_sequence
    monkeypatch.setattr(ops, "gather_sequence", lambda *args, **kw: calls.append(1) or original(*args, **kw))
    case.loss(model, case.inputs(torch.Generator().manual_seed(0)))
    single = len(calls)
    random_ltd.remove(model)
    random_ltd.apply(model, "1:3", keep=6, strategy=SameIndices([torch.arange(6).expand(zoo.BATCH, 6)] * 2))
    calls.clear()
    case.loss(model, case.inputs(torch.Generator().manual_seed(0)))
    assert single > 0 and 2 * single == len(calls), (single, len(calls))


def test_reentrant_checkpointing_of_a_route_is_refused():
    case, model = _build("llama-sdpa")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    random_ltd.apply(model, "1:3", keep=6, strategy=ToyRoute(1, 2))
    with pytest.raises(random_ltd.RandomLTDError, match="reentrant"):
        case.loss(model, case.inputs(torch.Generator().manual_seed(0)))


class Unstarted(Strategy):
    """Continues a route no layer started (e.g. its first layer is not a dropping layer)."""

    def select(self, layer, tokens, keep, context):
        return RouteStep(Route(torch.arange(keep).expand(tokens.shape[0], keep)), first=False, last=True)


Unstarted.routes = True


def test_a_route_continued_where_none_started_is_a_clear_error():
    case, model = _build("llama-sdpa")
    random_ltd.apply(model, "2", keep=6, strategy=Unstarted())
    with pytest.raises(random_ltd.RandomLTDError, match="consecutive"):
        case.loss(model, case.inputs(torch.Generator().manual_seed(0)))
