"""Hugging Face transformers (5.x) layer families.

Classes are registered by dotted name, so transformers is imported only by users who have it.
Any other transformers ``*DecoderLayer`` taking rotary ``position_embeddings`` joins the
Llama-style family, provided its ``forward`` takes nothing that family does not know and it is not
a layer of a hybrid convolution / state-space model (refused).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import sys

import torch.nn as nn

from random_ltd.adapters.base import LayerAdapter, register_family, register_layer, unknown_parameters
from random_ltd.adapters.moe import remember_kept
from random_ltd.attention.windows import restrict_to_window
from random_ltd.errors import RandomLTDError

_CACHES = ("cache", "past_key_values", "past_key_value", "layer_past")
_FLAGS = ("output_attentions",)

# GPT-2 and BERT-style blocks: one mask, learned positions, optional cross-attention.
BLOCK = LayerAdapter(
    name="gpt2",
    hidden="hidden_states",
    masks=("attention_mask",),
    query_masks=("encoder_attention_mask",),
    positions=("position_ids",),
    caches=_CACHES,
    use_cache="use_cache",
    passthrough=("encoder_hidden_states", *_FLAGS),
)

VIT = LayerAdapter(name="vit", hidden="hidden_states", masks=("attention_mask",), num_prefix_tokens=1,
                   passthrough=_FLAGS)

# Rotary decoders: cos/sin computed once for all layers, gathered with the tokens.
LLAMA = dataclasses.replace(BLOCK, name="llama", query_masks=(), position_pairs=("position_embeddings",),
                            passthrough=_FLAGS)


# Mixture-of-experts decoders: as Llama, and the router loss needs each layer's kept tokens.
MOE = dataclasses.replace(LLAMA, name="moe", prepare=remember_kept)


def _gpt_neo_window(layer, call, indices) -> None:
    """GPT-Neo's local layers cut their causal ``bias`` buffer at the input's length: a window of
    kept positions. The window in original positions, added to the gathered mask, makes them exact.
    Its flash class applies no window at all (nor does it here)."""
    attention = layer.attn.attention
    if attention.attention_type != "local" or "flash" in (attention.config._attn_implementation or ""):
        return
    mask = call.get("attention_mask")
    dtype = layer.ln_1.weight.dtype
    hidden = call.get("hidden_states")
    # one new token at generation (causal routing): it is the last of the keys its cache holds
    queries = indices[:, -1:] if hidden is not None and hidden.shape[1] == 1 else None
    call["attention_mask"] = restrict_to_window(mask, indices, attention.config.window_size, dtype, queries)


def _named(name: str, base: LayerAdapter = BLOCK, **fields) -> LayerAdapter:
    return dataclasses.replace(base, name=name, **fields)


_M = "transformers.models"
_NAMED = {
    f"{_M}.gpt2.modeling_gpt2.GPT2Block": BLOCK,
    f"{_M}.bert.modeling_bert.BertLayer": _named("bert"),
    f"{_M}.roberta.modeling_roberta.RobertaLayer": _named("bert"),
    f"{_M}.xlm_roberta.modeling_xlm_roberta.XLMRobertaLayer": _named("bert"),
    f"{_M}.vit.modeling_vit.ViTLayer": VIT,
    f"{_M}.deit.modeling_deit.DeiTLayer": _named("deit", VIT, num_prefix_tokens=2),
    f"{_M}.llama.modeling_llama.LlamaDecoderLayer": LLAMA,
    f"{_M}.gpt_neox.modeling_gpt_neox.GPTNeoXLayer": _named("gpt_neox", LLAMA),
    f"{_M}.gptj.modeling_gptj.GPTJBlock": _named("gptj", LLAMA),
    f"{_M}.opt.modeling_opt.OPTDecoderLayer": _named("opt", query_masks=()),
    f"{_M}.distilbert.modeling_distilbert.TransformerBlock": _named("distilbert", query_masks=()),
    f"{_M}.modernbert.modeling_modernbert.ModernBertEncoderLayer": _named("modernbert", LLAMA),
    f"{_M}.gpt_bigcode.modeling_gpt_bigcode.GPTBigCodeBlock": _named("gpt_bigcode"),
    f"{_M}.gpt_neo.modeling_gpt_neo.GPTNeoBlock": _named("gpt_neo", prepare=_gpt_neo_window),
    f"{_M}.falcon.modeling_falcon.FalconDecoderLayer": _named("falcon", LLAMA, key_biases=("alibi",)),
    f"{_M}.bloom.modeling_bloom.BloomBlock": _named("bloom", key_biases=("alibi",)),
}


# Token mixers of hybrid decoders that mix *adjacent* tokens (a convolution or a state-space /
# linear-attention recurrence): Mamba (Bamba, Jamba, Zamba, FalconH1, NemotronH, Granite hybrid),
# short convolutions (LFM2), gated delta-nets (Qwen3-Next, OLMo hybrid), lightning attention
# (MiniMax), RG-LRU (RecurrentGemma).
_SEQUENTIAL_MIXER = re.compile(r"Mamba|Mixer|ShortConv|DeltaNet|LinearAttention|LightningAttention|Rglru|Recurrent")


def sequential_mixers(layer_class: type) -> list[str]:
    """Classes of ``layer_class``'s modeling module that mix adjacent tokens: set in a hybrid model.

    Decided per class (the registry's unit): one such class makes the whole family a hybrid, as
    LFM2's single decoder class holds a short convolution in some layers and attention in others.
    """
    module = sys.modules.get(layer_class.__module__)
    return sorted(name for name, value in vars(module or object()).items()
                  if isinstance(value, type) and value.__module__ == layer_class.__module__
                  and issubclass(value, nn.Module) and _SEQUENTIAL_MIXER.search(name))


def check_not_hybrid(layer_class: type) -> None:
    mixers = sequential_mixers(layer_class)
    if mixers:
        raise RandomLTDError(
            f"{layer_class.__name__} belongs to a hybrid model whose layers mix tokens with a convolution or "
            f"state-space recurrence ({', '.join(mixers)}): run on non-adjacent kept tokens such a layer computes "
            "something else than the layer trained, and its cache is not an attention cache; random-LTD does not "
            "support these models"
        )


def is_llama_style_decoder(layer_class: type) -> bool:
    """Any transformers decoder layer that takes rotary ``position_embeddings`` (Mistral, Qwen, ...).

    Raises ``RandomLTDError`` for a decoder layer of a hybrid model (``check_not_hybrid``) and for
    a layer whose ``forward`` takes a parameter the family does not know (it could hold per-token
    values that would reach the short layer at full length, as Falcon's ``alibi`` would).
    """
    if not layer_class.__module__.startswith("transformers.") or not layer_class.__name__.endswith("DecoderLayer"):
        return False
    try:
        parameters = inspect.signature(layer_class.forward).parameters
    except (TypeError, ValueError):
        return False
    if "hidden_states" not in parameters:
        return False
    check_not_hybrid(layer_class)
    if "position_embeddings" not in parameters:
        return False
    unknown = unknown_parameters(LLAMA, layer_class)
    if unknown:
        raise RandomLTDError(
            f"{layer_class.__name__}.forward takes {', '.join(map(repr, unknown))}, which the Llama-style family "
            "does not know how to gather with the kept tokens; register the class with random_ltd.register_layer("
            f"{layer_class.__name__}, ...) naming how each is gathered (masks=, positions=, key_biases=, passthrough=)"
        )
    return True


def is_moe_decoder(layer_class: type) -> bool:
    """A Llama-style decoder layer of a model with a router load-balancing loss (Mixtral, Qwen-MoE, ...)."""
    module = sys.modules.get(layer_class.__module__)
    return hasattr(module, "load_balancing_loss_func") and is_llama_style_decoder(layer_class)


def register_all() -> None:
    for dotted_name, adapter in _NAMED.items():
        register_layer(dotted_name, adapter)
    register_family(is_moe_decoder, MOE)
    register_family(is_llama_style_decoder, LLAMA)
