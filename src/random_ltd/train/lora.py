"""``random-ltd train --task finetune --lora``: LoRA adapters (PEFT) on the pretrained model.

Only the adapters train; random-LTD wraps the same transformer layers as without LoRA (the
adapters live inside them), so the kept tokens pass through the adapted projections.
Both arms get the same adapter initialisation (drawn from torch's RNG after the weights load).
"""
from __future__ import annotations

import importlib.util

import torch.nn as nn

from random_ltd.train.config import TrainConfig, flag_error

INSTALL_HINT = "pip install peft"
DEFAULT_RANK = 8
DEFAULT_TARGETS = "q_proj,v_proj"  # Llama-family attention projections (SmolLM2)


def check_installed() -> None:
    """``--lora`` needs peft."""
    if importlib.util.find_spec("peft") is None:
        raise flag_error("lora", f"needs the peft package: {INSTALL_HINT}")


def targets(config: TrainConfig) -> list[str]:
    return [name.strip() for name in (config.lora_targets or DEFAULT_TARGETS).split(",") if name.strip()]


def with_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    """``model`` with LoRA adapters of rank ``--lora-rank`` on ``--lora-targets`` (alpha = 2 x rank)."""
    import peft

    rank = config.lora_rank or DEFAULT_RANK
    settings = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets(config),
                               task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, settings)
    except ValueError as error:  # peft names the targets it could not find
        raise flag_error("lora_targets", str(error).splitlines()[0]) from None
