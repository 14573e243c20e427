"""Hugging Face adapters: what each family's forward takes is known, and nothing unknown reaches a short layer."""
from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
import zoo

import random_ltd
from random_ltd.adapters import base, hf

torch.set_num_threads(1)


def _layer_class(dotted_name: str) -> type:
    module, name = dotted_name.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("dotted_name", sorted(hf._NAMED))
def test_every_named_family_knows_every_parameter_of_its_forward(dotted_name):
    assert base.unknown_parameters(hf._NAMED[dotted_name], _layer_class(dotted_name)) == []


def test_gpt2_and_bert_share_one_adapter():
    gpt2 = hf._NAMED["transformers.models.gpt2.modeling_gpt2.GPT2Block"]
    bert = hf._NAMED["transformers.models.bert.modeling_bert.BertLayer"]
    assert dataclasses.replace(bert, name=gpt2.name) == gpt2


def test_llama_style_family_refuses_a_decoder_layer_with_an_unknown_argument(monkeypatch):
    """Falcon's ALiBi bias has the sequence in it: unregistered, the family must refuse it at apply."""
    falcon_layer = "transformers.models.falcon.modeling_falcon.FalconDecoderLayer"
    monkeypatch.delitem(base._BY_KEY, falcon_layer)
    model = zoo.falcon("eager", alibi=True)
    with pytest.raises(random_ltd.RandomLTDError, match="FalconDecoderLayer.forward takes 'alibi'"):
        random_ltd.apply(model, keep=8)


def test_llama_style_family_still_covers_layers_it_knows():
    for build in (zoo.qwen3, zoo.phi, zoo.gemma, zoo.mistral):
        handle = random_ltd.apply(build(), keep=8)
        assert {layer.family for layer in handle.layers} == {"llama"}


def test_falcon_with_alibi_and_eager_attention_trains():
    model = zoo.falcon("eager", alibi=True).train()
    random_ltd.apply(model, keep=8, seed=0)
    inputs = zoo._lm_inputs(torch.Generator().manual_seed(0), padded=True)
    loss = zoo._lm_loss(model, inputs)
    loss.backward()
    assert torch.isfinite(loss)


class KeywordBlock(zoo.Block):
    def forward(self, x, **kwargs):
        return super().forward(x)


class KeywordNanoGPT(zoo.NanoGPT):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(KeywordBlock() for _ in range(4))

    def forward(self, input_ids, extra):
        x = self.wte(input_ids)
        for block in self.blocks:
            x = block(x, token_weights=extra)
        return x


def test_a_per_token_keyword_argument_no_field_names_is_refused():
    random_ltd.register_layer(KeywordBlock)
    try:
        model = KeywordNanoGPT().train()
        random_ltd.apply(model, keep=8)
        ids = torch.randint(0, zoo.VOCAB, (2, zoo.SEQ))
        model(ids, extra=torch.zeros(2, 1))  # not per token: passes
        with pytest.raises(random_ltd.RandomLTDError, match="'token_weights' of shape \\(2, 16\\)"):
            model(ids, extra=torch.zeros(2, zoo.SEQ))
    finally:
        random_ltd.unregister_layer(KeywordBlock)
