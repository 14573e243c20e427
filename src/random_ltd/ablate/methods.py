"""The ablation's methods beyond the paper's random-LTD, trained by ``random-ltd train``'s loop
through its method hook (``random_ltd.train.methods``): TokenBypass (Hou et al.), which keeps the
tokens with the highest moving-average loss and learns that average after every step, and
random-LTD that always keeps the special tokens (Section 5.2)."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from random_ltd import tokenbypass
from random_ltd.api import apply
from random_ltd.train.methods import RANDOM_LTD, Method, RandomLTD
from random_ltd.train.tasks import Batch, ModelShape, Task


def special_ids(task: Task) -> tuple[int, ...]:
    """Ids TokenBypass never drops (Hou et al.): [CLS]/[SEP]/[MASK] for BERT, the end-of-text
    separator (BOS/EOS) for GPT."""
    if task.name == "bert":
        return (task.cls_id, task.sep_id, task.mask_id)
    return (task.split.eot_id,)


def protected_ids(task: Task) -> tuple[int, ...]:
    """Ids protected random-LTD keeps (Section 5.2): the sentence markers [CLS]/[SEP] for BERT."""
    if task.name == "bert":
        return (task.cls_id, task.sep_id)
    return (task.split.eot_id,)


class ProtectedRandomLTD(RandomLTD):
    """Random-LTD whose dropping layers always keep the positions of ``protected_ids``."""

    name = "random_ltd_protected"

    def prepare(self, model: nn.Module, task: Task, drop_layers: tuple[int, ...], shape: ModelShape,
                seed: int) -> Any:
        return apply(model, list(drop_layers), seed=seed, protect_ids=protected_ids(task))


class TokenBypass:
    """TokenBypass over the same layers (a contiguous range), its importance learnt from each
    step's per-token losses."""

    name = "tokenbypass"

    def prepare(self, model: nn.Module, task: Task, drop_layers: tuple[int, ...], shape: ModelShape,
                seed: int) -> Any:
        return tokenbypass.apply(model, list(drop_layers), special_ids=special_ids(task), vocab_size=shape.vocab_size)

    def after_backward(self, handle: Any, task: Task, batch: Batch, output: Any) -> None:
        if task.name == "bert":
            handle.update(*tokenbypass.mlm_token_losses(output.logits, batch["labels"]))
        else:
            handle.update(*tokenbypass.causal_lm_token_losses(output.logits, batch["input_ids"]))


METHODS: dict[str, Method] = {method.name: method for method in (RANDOM_LTD, ProtectedRandomLTD(), TokenBypass())}
