"""Whether the arms of a run fit in memory together, so that ``random-ltd train`` can step them in lockstep.

A rough upper estimate from the model's shape: lockstep keeps every arm's weights, gradients and
AdamW moments alive at once (16 bytes per float32 parameter), where one arm after the other keeps
one; the activations of a step exist for one arm at a time in both orders.
"""
from __future__ import annotations

import os

import torch

from random_ltd.train.tasks import ModelShape

BYTES_PER_PARAMETER = 16  # float32 weight, gradient and AdamW's two moments
SHARE_OF_FREE_MEMORY = 0.5  # what the extra arms may take of the memory free now


def parameter_estimate(shape: ModelShape) -> int:
    """Attention (4 d x d) and feed-forward (2 d x f) per layer, untied embedding and output layer."""
    per_layer = 4 * shape.hidden ** 2 + 2 * shape.hidden * shape.ffn_hidden
    return shape.num_layers * per_layer + 2 * shape.vocab_size * shape.hidden


def arm_state_bytes(shape: ModelShape) -> int:
    return BYTES_PER_PARAMETER * parameter_estimate(shape)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now (``None`` where the system does not say)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def fits_together(arm_count: int, shape: ModelShape, free: int | None) -> bool:
    """Whether ``arm_count`` arms' states fit where one would, within ``SHARE_OF_FREE_MEMORY`` of
    ``free`` bytes. Unknown free memory: only if the extra arms need under 1 GiB."""
    extra = (arm_count - 1) * arm_state_bytes(shape)
    if free is None:
        return extra < 2 ** 30
    return extra <= SHARE_OF_FREE_MEMORY * free
