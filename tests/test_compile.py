"""Dropping layers under ``torch.compile(fullgraph=True)``: no graph break, eager's numbers, few recompiles.

Backend ``aot_eager`` runs the traced graph with eager kernels and eager random numbers, so a
compiled run equals an eager one with the same seeds; a graph break would fail ``fullgraph``.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
import zoo

import random_ltd

torch.set_num_threads(1)

BLOCK_CASES = {case.name: case for case in zoo.CASES
               if case.name in ("gpt2-sdpa", "bert-sdpa-pad", "llama-sdpa", "vit-sdpa")}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _step(case, model, inputs):
    model.zero_grad(set_to_none=True)
    loss = case.loss(model, inputs)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _compile_blocks(model, handle):
    modules = dict(model.named_modules())
    for wrapped in handle.layers:
        modules[wrapped.name].compile(fullgraph=True, backend="aot_eager")


@pytest.mark.parametrize("name", list(BLOCK_CASES))
def test_each_dropping_block_compiles_fullgraph_and_equals_eager(name):
    case = BLOCK_CASES[name]
    torch.manual_seed(0)
    eager = case.build().train()
    compiled = copy.deepcopy(eager)
    random_ltd.apply(eager, keep=case.seq_len // 2, seed=5)
    _compile_blocks(compiled, random_ltd.apply(compiled, keep=case.seq_len // 2, seed=5))
    inputs = case.inputs(torch.Generator().manual_seed(1))
    losses = []
    for step in range(2):
        torch.manual_seed(10 + step)
        ref_loss, ref_grads = _step(case, eager, inputs)
        torch.manual_seed(10 + step)
        loss, grads = _step(case, compiled, inputs)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        for key in ref_grads:
            torch.testing.assert_close(grads[key], ref_grads[key], rtol=1e-4, atol=1e-5, msg=key)
        losses.append(loss)
    assert not torch.equal(losses[0], losses[1]), "draws must change from step to step"


def test_whole_llama_compiles_fullgraph_with_and_without_random_ltd():
    case = BLOCK_CASES["llama-sdpa"]
    torch.manual_seed(0)
    plain = case.build().train()
    inputs = case.inputs(torch.Generator().manual_seed(1))
    torch.compile(copy.deepcopy(plain), fullgraph=True, backend="aot_eager")(**inputs)  # the premise
    eager = copy.deepcopy(plain)
    random_ltd.apply(eager, keep=8, seed=3)
    dropping = copy.deepcopy(plain)
    random_ltd.apply(dropping, keep=8, seed=3)
    compiled = torch.compile(dropping, fullgraph=True, backend="aot_eager")
    torch.manual_seed(4)
    ref_loss, ref_grads = _step(case, eager, inputs)
    torch.manual_seed(4)
    loss, _ = _step(case, compiled, inputs)
    grads = {name: p.grad for name, p in dropping.named_parameters() if p.grad is not None}
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for key in ref_grads:
        torch.testing.assert_close(grads[key], ref_grads[key], rtol=1e-4, atol=1e-5, msg=key)


def test_recompilations_over_an_mslg_run_are_one_per_kept_length():
    """The kept length is a shape: each distinct length compiles once, repeats reuse it."""
    compiles = []

    def counting_backend(graph, example_inputs):
        compiles.append(graph)
        return graph.forward

    torch.manual_seed(0)
    case = BLOCK_CASES["gpt2-sdpa"]
    model = case.build().train()
    schedule = random_ltd.MSLG(start=4, increment=4, every_steps=2, seq_len=case.seq_len)
    handle = random_ltd.apply(model, seed=1)
    compiled = torch.compile(model, fullgraph=True, backend=counting_backend)
    inputs = case.inputs(torch.Generator().manual_seed(1))
    kept = []
    for step in range(10):
        kept.append(schedule(step))
        handle.set_keep(kept[-1])
        case.loss(compiled, inputs).backward()
    assert sorted(set(kept)) == [4, 8, 12, 16]
    assert len(compiles) == len(set(kept))  # 16 = full length: the plain graph
