"""Dropping layers under ``torch.compile(fullgraph=True)``: no graph break, eager's numbers, few recompiles.

Backend ``aot_eager`` runs the traced graph with eager kernels and eager random numbers, so a
compiled run equals an eager one with the same seeds; a graph break would fail ``fullgraph``.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
import transformers
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


def _counting(backend: str = "aot_eager"):
    """A backend that records every graph Dynamo hands it, then compiles it with ``backend``."""
    graphs = []

    def compile_graph(graph, example_inputs):
        graphs.append(graph)
        return torch._dynamo.lookup_backend(backend)(graph, example_inputs)

    return compile_graph, graphs


def _deep_gpt_neox(layers: int):
    config = transformers.GPTNeoXConfig(
        num_hidden_layers=layers, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=zoo.VOCAB,
        max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation="sdpa",
        hidden_dropout=0.0, attention_dropout=0.0)
    return transformers.GPTNeoXForCausalLM(config).train()


def _mslg_per_block(seq_len: int, start: int, dynamic_keep: bool, layers: int = 24):
    """Eager and per-block compiled (``fullgraph``, Dynamo's default limits) copies of a deep GPT-NeoX
    over an MSLG run; returns the kept lengths and the graphs compiled, after checking every step's
    loss and gradients against eager."""
    torch.manual_seed(0)
    eager = _deep_gpt_neox(layers)
    compiled = copy.deepcopy(eager)
    schedule = random_ltd.MSLG(seq_len, start=start, increment=start, every_steps=1)
    options = {"dynamic_keep": True} if dynamic_keep else {}
    eager_handle = random_ltd.apply(eager, seed=5)
    handle = random_ltd.apply(compiled, seed=5, **options)
    assert len(handle.layers) == layers - 2
    backend, graphs = _counting()
    for block in compiled.gpt_neox.layers:
        block.compile(fullgraph=True, backend=backend)
    ids = torch.randint(0, zoo.VOCAB, (2, seq_len), generator=torch.Generator().manual_seed(1))
    kept = []
    for step in range(seq_len // start + 1):
        kept.append(schedule(step))
        results = []
        for model, model_handle in ((eager, eager_handle), (compiled, handle)):
            model_handle.set_keep(kept[-1])
            torch.manual_seed(100 + step)
            model.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            results.append((loss.detach(), {name: p.grad for name, p in model.named_parameters()}))
        (ref_loss, ref_grads), (loss, grads) = results
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    return kept, graphs


def test_per_block_compile_of_24_layers_holds_under_default_limits_with_one_graph_per_kept_length():
    """22 dropping blocks share their graphs: 1 for the plain class + 1 per distinct kept length,
    whatever the depth (a Python int per layer would make every layer its own graph)."""
    kept, graphs = _mslg_per_block(seq_len=16, start=4, dynamic_keep=False)
    assert sorted(set(kept)) == [4, 8, 12, 16]
    assert len(graphs) == 1 + len(set(kept))


def test_dynamic_keep_compiles_one_dropping_graph_for_a_whole_mslg_schedule():
    """Seven dropping lengths and the full one: 1 plain graph, 1 dropping graph for every length,
    1 for the full length (where the layer runs unchanged)."""
    kept, graphs = _mslg_per_block(seq_len=32, start=4, dynamic_keep=True)
    assert len(set(kept)) == 8 and kept[-1] == 32
    assert len(graphs) <= 3
