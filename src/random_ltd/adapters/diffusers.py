"""diffusers (0.42) diffusion-transformer families: DiT, PixArt, SD3 and Flux blocks.

Classes are registered by dotted name, so diffusers is imported only by users who have it.
Only image tokens are dropped. Per-sample conditioning (timestep, class labels, pooled text)
and the text stream pass unchanged: PixArt cross-attends to every text token, SD3 and Flux
attend jointly over all text tokens plus the kept image tokens, and their text stream is
updated by the block as usual.

- ``BasicTransformerBlock`` (DiT, PixArt): ``hidden_states`` is the image stream; the
  self-attention mask is gathered on its keys, the cross-attention mask covers text keys.
- ``JointTransformerBlock`` (SD3, SD3.5) and Flux's two block kinds take the image stream
  (``hidden_states``) and the text stream (``encoder_hidden_states``) apart and return
  ``(text, image)``: the image stream is output 1. SD3's last block returns ``None`` for text.
- Flux's rotary table ``image_rotary_emb`` is one ``(text + image, d)`` table for the whole
  batch (diffusers' ``apply_rotary_emb`` broadcasts it and takes no batched table), so every
  sequence of a batch keeps the same image tokens in a Flux block (``one_draw_per_batch``) and
  the table's image rows are gathered once, its text rows untouched.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch.nn as nn

from random_ltd.adapters.base import LayerAdapter, register_layer
from random_ltd.errors import RandomLTDError


def _check_basic_block(layer: nn.Module) -> None:
    """A block with its own ``positional_embeddings`` adds positions by index inside: refuse it."""
    if getattr(layer, "pos_embed", None) is not None:
        raise RandomLTDError(
            f"this {type(layer).__name__} adds positional embeddings inside the block by token index "
            "(positional_embeddings=...): on the kept tokens they would be the wrong positions. DiT and PixArt "
            "add positions before the blocks; build the model that way to drop tokens"
        )


def _check_two_streams(layer: nn.Module) -> None:
    """The image stream must come apart from the text stream: a block taking one concatenated
    stream (text then image) has no image-token stream of its own to drop from."""
    if "encoder_hidden_states" not in inspect.signature(type(layer).forward).parameters:
        raise RandomLTDError(
            f"{type(layer).__name__}.forward takes text and image tokens in one stream (no "
            "encoder_hidden_states): random-LTD cannot tell image tokens from text tokens there. "
            "diffusers>=0.42 passes the two streams apart"
        )


def _refuse_joint_mask(layer: nn.Module, call, indices) -> None:
    kwargs = call.get("joint_attention_kwargs") or {}
    if kwargs.get("attention_mask") is not None:
        raise RandomLTDError(
            "an attention_mask in joint_attention_kwargs covers text and image tokens together; dropping image "
            "tokens with such a mask is not supported: pass no mask, or keep this layer full"
        )


# DiT (ada_norm_zero, class labels) and PixArt (ada_norm_single, cross-attention to text).
BASIC_BLOCK = LayerAdapter(
    name="diffusers.basic_block",
    hidden="hidden_states",
    masks=("attention_mask",),
    query_masks=("encoder_attention_mask",),
    passthrough=("encoder_hidden_states", "timestep", "cross_attention_kwargs", "class_labels",
                 "added_cond_kwargs"),
    check=_check_basic_block,
)

# SD3 / SD3.5: joint attention over text and the kept image tokens; image stream is output 1.
JOINT_BLOCK = LayerAdapter(
    name="diffusers.joint_block",
    hidden="hidden_states",
    passthrough=("encoder_hidden_states", "temb", "joint_attention_kwargs"),
    output_index=1,
    check=_check_two_streams,
)

# Flux double- and single-stream blocks: as SD3's, plus the unbatched text-then-image rotary table.
FLUX_BLOCK = dataclasses.replace(
    JOINT_BLOCK,
    name="diffusers.flux_block",
    shared_position_pairs=("image_rotary_emb",),
    one_draw_per_batch=True,
    prepare=_refuse_joint_mask,
)

_D = "diffusers.models"
_NAMED = {
    f"{_D}.attention.BasicTransformerBlock": BASIC_BLOCK,
    f"{_D}.attention.JointTransformerBlock": JOINT_BLOCK,
    f"{_D}.transformers.transformer_flux.FluxTransformerBlock": FLUX_BLOCK,
    f"{_D}.transformers.transformer_flux.FluxSingleTransformerBlock": FLUX_BLOCK,
}


def register_all() -> None:
    for dotted_name, adapter in _NAMED.items():
        register_layer(dotted_name, adapter)
