"""The layer-stack benchmark: full length (a), random-LTD (b) and the ideal (c).

The stack is a list of Hugging Face ``GPT2Block`` layers called the way ``GPT2Model`` calls
them (mask positionally, ``position_ids`` by keyword; ``None`` mask = causal attention), so
(b) goes through the real surgery and adapter path. The ideal (c) runs the same layers with
the middle ones on one contiguous slice of ``keep`` tokens: one slice and one concatenation
for the whole stack, no sampling, no masks, nothing per layer. (b) - (c) is therefore the
whole cost of random-LTD's machinery.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn as nn

import random_ltd
from random_ltd.bench.config import StackShape


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 runs as mixed precision (fp32 weights, bf16 matmuls); fp32 needs no context."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _call_block(layer: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    return layer(hidden, None, None, None, encoder_attention_mask=None, use_cache=False, position_ids=position_ids)


class LayerStack(nn.Module):
    """GPT-2 blocks in sequence; ``forward(hidden, position_ids) -> hidden``."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = _call_block(layer, hidden, position_ids)
        return hidden


def build_stack(shape: StackShape, device: torch.device, seed: int = 0) -> LayerStack:
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    config = GPT2Config(
        n_embd=shape.hidden, n_head=shape.heads, n_layer=shape.layers, n_positions=shape.seq_len,
        resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0, attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    stack = LayerStack([GPT2Block(config, layer_idx=i) for i in range(shape.layers)])
    return stack.to(device).train()


def ideal_forward(layers: nn.ModuleList, hidden: torch.Tensor, position_ids: torch.Tensor, keep: int) -> torch.Tensor:
    """First and last layer at full length, the middle ones on the first ``keep`` tokens."""
    first, *middle, last = layers
    hidden = _call_block(first, hidden, position_ids)
    kept, rest = hidden[:, :keep], hidden[:, keep:]
    kept_positions = position_ids[:, :keep]
    for layer in middle:
        kept = _call_block(layer, kept, kept_positions)
    return _call_block(last, torch.cat([kept, rest], dim=1), position_ids)


class StackBench:
    """One stack with random-LTD applied, and its inputs; each variant is one training step.

    (a) and (c) run with the kept length set to ``None``, so the wrapped layers pass straight
    through to the original ``forward`` (one attribute check per call): all three variants use
    the same weights and the same memory.
    """

    def __init__(self, shape: StackShape, device: torch.device, dtype: torch.dtype, seed: int = 0) -> None:
        self.shape, self.device, self.dtype = shape, device, dtype
        self.stack = build_stack(shape, device, seed)
        self.handle = random_ltd.apply(self.stack, layers="1:-1", seed=seed)
        generator = torch.Generator().manual_seed(seed)
        size = (shape.batch, shape.seq_len, shape.hidden)
        self.inputs = torch.randn(size, generator=generator).to(device).requires_grad_(True)
        self.upstream = torch.randn(size, generator=generator).to(device)
        self.position_ids = torch.arange(shape.seq_len, device=device).unsqueeze(0)

    def _step(self, keep: int | None, forward: Callable[[], torch.Tensor]) -> None:
        self.handle.set_keep(keep)
        self.stack.zero_grad(set_to_none=True)
        self.inputs.grad = None
        with autocast(self.device, self.dtype):
            output = forward()
        output.backward(self.upstream.to(output.dtype))

    def full(self) -> None:
        self._step(None, lambda: self.stack(self.inputs, self.position_ids))

    def random_ltd(self, keep: int) -> None:
        self._step(keep, lambda: self.stack(self.inputs, self.position_ids))

    def ideal(self, keep: int) -> None:
        self._step(None, lambda: ideal_forward(self.stack.layers, self.inputs, self.position_ids, keep))

    def run(self, variant: str, keep: int | None = None) -> None:
        """``variant`` is ``"full"``, ``"ltd"`` or ``"ideal"``."""
        if variant == "full":
            self.full()
        else:
            getattr(self, {"ltd": "random_ltd", "ideal": "ideal"}[variant])(keep)

    def variants(self, keeps: list[int]) -> dict[str, Callable[[], None]]:
        """``{"full": ..., "ltd@k": ..., "ideal@k": ...}`` zero-argument steps to time."""
        steps: dict[str, Callable[[], None]] = {"full": self.full}
        for keep in keeps:
            steps[f"ltd@{keep}"] = lambda keep=keep: self.random_ltd(keep)
            steps[f"ideal@{keep}"] = lambda keep=keep: self.ideal(keep)
        return steps
