"""Training steps of the ``gpt`` task's model: model, loss, AdamW, at full length and with random-LTD.

The model is a Hugging Face GPT-2 language model built from a config of the ``gpt`` task's
default size (``random_ltd.train``), called the way the training program calls it
(``model(input_ids=..., labels=...)`` without a key/value cache, gradient clipping, the program's
AdamW), random-LTD on layers 1..L-2.
"""
from __future__ import annotations

import torch
import torch.nn as nn

import random_ltd
from random_ltd.bench.config import GptShape
from random_ltd.bench.stack import autocast, ideal_forward
from random_ltd.train.config import TrainConfig
from random_ltd.train.program import make_optimizer, training_model

DROP_LAYERS = "1:-1"


def build_gpt(shape: GptShape, device: torch.device, seed: int = 0) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=shape.vocab, n_positions=max(1024, shape.seq_len), n_embd=shape.hidden, n_layer=shape.layers,
        n_head=shape.heads, resid_pdrop=shape.dropout, embd_pdrop=shape.dropout, attn_pdrop=shape.dropout,
        bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # what it computes anyway; unset, transformers logs a warning (a graph break)
    return training_model(model).to(device).train()


def ideal_lm_loss(model: nn.Module, input_ids: torch.Tensor, keep: int) -> torch.Tensor:
    """The model's loss with layers 1..L-2 on the first ``keep`` tokens only (``ideal_forward``):
    what a training step could cost if random-LTD's sampling, gathers and scatters were free."""
    transformer = model.transformer
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    hidden = transformer.drop(transformer.wte(input_ids) + transformer.wpe(positions))
    hidden = transformer.ln_f(ideal_forward(transformer.h, hidden, positions, keep))
    return model.loss_function(model.lm_head(hidden), input_ids, vocab_size=model.config.vocab_size)


class GptBench:
    """One model with random-LTD applied, its AdamW, and one fixed batch of token ids.

    The baseline is a step with the kept length set to ``None`` (the wrapped layers pass
    through), so both arms time the same weights, optimizer and memory.
    """

    def __init__(self, shape: GptShape, device: torch.device, dtype: torch.dtype, seed: int = 0) -> None:
        self.shape, self.device, self.dtype = shape, device, dtype
        self.model = build_gpt(shape, device, seed)
        self.handle = random_ltd.apply(self.model, layers=DROP_LAYERS, seed=seed)
        self.optimizer = make_optimizer(self.model, TrainConfig(lr=1e-4))
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq_len), generator=generator).to(device)

    def step(self, keep: int | None, model: nn.Module | None = None) -> None:
        """One training step: forward with the loss, backward, gradient clipping, AdamW.

        ``model`` replaces the module called (e.g. a ``torch.compile`` of ``self.model``).
        """
        called = self.model if model is None else model
        self._train(keep, lambda: called(input_ids=self.input_ids, labels=self.input_ids).loss)

    def ideal(self, keep: int) -> None:
        """The same step with ``ideal_lm_loss``: the bound random-LTD approaches."""
        self._train(None, lambda: ideal_lm_loss(self.model, self.input_ids, keep))

    def _train(self, keep: int | None, compute_loss) -> None:
        self.handle.set_keep(keep)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.dtype):
            loss = compute_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()

    def baseline(self) -> None:
        self.step(None)

    def random_ltd(self, keep: int) -> None:
        self.step(keep)

    def variants(self, keeps: list[int]) -> dict:
        """``{"baseline": ..., "ltd@k": ..., "ideal@k": ...}`` zero-argument steps to time."""
        steps = {"baseline": self.baseline}
        for keep in keeps:
            steps[f"ltd@{keep}"] = lambda keep=keep: self.random_ltd(keep)
            steps[f"ideal@{keep}"] = lambda keep=keep: self.ideal(keep)
        return steps

    def flops(self, keep: int | None) -> int:
        shape = self.shape
        return random_ltd.flops_per_step(
            shape.seq_len, shape.batch, shape.layers, shape.hidden, kept=keep,
            drop_layers=self.handle.drop_layers, vocab_size=shape.vocab,
        )

    def layer_tokens(self, keep: int | None) -> int:
        shape = self.shape
        return random_ltd.layer_tokens_per_step(shape.seq_len, shape.batch, shape.layers, self.handle.drop_layers, keep)
