"""Per-wrap constants of the attention inputs are computed when a layer is wrapped, not at every call."""
from __future__ import annotations

import torch
import zoo

import random_ltd
from random_ltd.attention import other_inputs as attention_inputs
from random_ltd.layer import layer_state

torch.set_num_threads(1)


def _count_calls(monkeypatch, owner, name):
    calls = []
    original = getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def test_a_dropping_forward_neither_walks_modules_nor_rebuilds_the_known_names(monkeypatch):
    model = zoo.llama("sdpa").train()
    handle = random_ltd.apply(model, keep=8, seed=0)
    walks = _count_calls(monkeypatch, torch.nn.Module, "modules")
    known = _count_calls(monkeypatch, attention_inputs, "known_parameters")
    layers = {id(module) for name, module in model.named_modules() if name in {w.name for w in handle.layers}}
    model(**zoo._lm_inputs(torch.Generator().manual_seed(0)))
    assert [args for args in walks if id(args[0]) in layers] == []
    assert known == []


def test_the_setup_follows_a_later_change_of_attention_implementation():
    model = zoo.llama("sdpa").train()
    handle = random_ltd.apply(model, keep=8)
    layer = dict(model.named_modules())[handle.layers[0].name]
    setup = layer_state(layer).attention
    assert setup.implementation == "sdpa" and setup.sliding_window is None
    assert {"attention_mask", "position_ids", "cu_seq_lens_q"} <= setup.known
    model.set_attn_implementation("eager")
    assert setup.implementation == "eager"
