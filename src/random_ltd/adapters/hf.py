"""Hugging Face transformers (5.x) layer families: GPT-2, BERT/RoBERTa, ViT, Llama-style decoders.

Classes are registered by dotted name, so transformers is imported only by users who have it.
"""
from __future__ import annotations

import inspect

from random_ltd.adapters.base import LayerAdapter, register_family, register_layer

_CACHES = ("cache", "past_key_values", "past_key_value", "layer_past")

GPT2 = LayerAdapter(
    name="gpt2",
    hidden="hidden_states",
    masks=("attention_mask",),
    query_masks=("encoder_attention_mask",),
    positions=("position_ids",),
    caches=_CACHES,
    use_cache="use_cache",
)

BERT = LayerAdapter(
    name="bert",
    hidden="hidden_states",
    masks=("attention_mask",),
    query_masks=("encoder_attention_mask",),
    positions=("position_ids",),
    caches=_CACHES,
    use_cache="use_cache",
)

VIT = LayerAdapter(name="vit", hidden="hidden_states", masks=("attention_mask",), num_prefix_tokens=1)

LLAMA = LayerAdapter(
    name="llama",
    hidden="hidden_states",
    masks=("attention_mask",),
    positions=("position_ids",),
    position_pairs=("position_embeddings",),
    caches=_CACHES,
    use_cache="use_cache",
)

_MODELS = "transformers.models"
_NAMED = {
    f"{_MODELS}.gpt2.modeling_gpt2.GPT2Block": GPT2,
    f"{_MODELS}.bert.modeling_bert.BertLayer": BERT,
    f"{_MODELS}.roberta.modeling_roberta.RobertaLayer": BERT,
    f"{_MODELS}.xlm_roberta.modeling_xlm_roberta.XLMRobertaLayer": BERT,
    f"{_MODELS}.vit.modeling_vit.ViTLayer": VIT,
    f"{_MODELS}.deit.modeling_deit.DeiTLayer": LayerAdapter(
        name="deit", hidden="hidden_states", masks=("attention_mask",), num_prefix_tokens=2
    ),
    f"{_MODELS}.llama.modeling_llama.LlamaDecoderLayer": LLAMA,
}


def is_llama_style_decoder(layer_class: type) -> bool:
    """Any transformers decoder layer that takes rotary ``position_embeddings`` (Mistral, Qwen, ...)."""
    if not layer_class.__module__.startswith("transformers.") or not layer_class.__name__.endswith("DecoderLayer"):
        return False
    try:
        parameters = inspect.signature(layer_class.forward).parameters
    except (TypeError, ValueError):
        return False
    return "hidden_states" in parameters and "position_embeddings" in parameters


def register_all() -> None:
    for dotted_name, adapter in _NAMED.items():
        register_layer(dotted_name, adapter)
    register_family(is_llama_style_decoder, LLAMA)
