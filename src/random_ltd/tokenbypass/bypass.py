"""TokenBypass surgery: a contiguous range of layers runs on the most important tokens only.

One set of indices per forward pass, chosen from the input ids before the model runs. The first
layer of the range gathers the kept tokens (and keeps the full sequence aside); every layer of
the range gathers its masks and positions with the same indices; the last layer of the range
scatters its output back into the full sequence, so the dropped tokens re-join unchanged. Layers
are swapped to a subclass of their own class (as in ``random_ltd.layer``): no parameter is
added and ``state_dict`` keys stay the same.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch
import torch.nn as nn

from random_ltd import adapters, ops
from random_ltd.adapters.base import LayerAdapter
from random_ltd.errors import RandomLTDError
from random_ltd.layer import _Arguments, _forward_signature, _gather_inputs, _replace_hidden, is_wrapped
from random_ltd.tokenbypass.importance import TokenImportance, special_mask, token_scores, top_k_indices

_STATE_ATTR = "_token_bypass_state"
_SUBCLASSES: dict[type, type] = {}


@dataclasses.dataclass
class BypassControl:
    """Shared by the wrapped layers of one model: this forward pass's indices and the full
    sequence held aside between the first and the last layer of the range."""

    seq_len: int | None = None
    indices: torch.Tensor | None = None
    flat: torch.Tensor | None = None
    full: torch.Tensor | None = None

    def clear(self) -> None:
        self.seq_len = self.indices = self.flat = self.full = None


@dataclasses.dataclass
class BypassLayerState:
    adapter: LayerAdapter
    control: BypassControl
    original_class: type
    signature: inspect.Signature
    first: bool
    last: bool


class TokenBypassLayerMixin:
    def forward(self, *args, **kwargs):
        state: BypassLayerState = self.__dict__[_STATE_ATTR]
        control = state.control
        if not self.training or control.indices is None:
            return super().forward(*args, **kwargs)
        arguments = _Arguments(state.signature.bind(*args, **kwargs))
        hidden_name = state.adapter.hidden or next(iter(state.signature.parameters))
        batch_first = state.adapter.batch_first is None or state.adapter.batch_first(self)
        if state.first:
            self._enter(control, arguments, hidden_name, batch_first)
        _gather_inputs(self, state.adapter, arguments, control.indices, control.seq_len)
        output = super().forward(*arguments.bound.args, **arguments.bound.kwargs)
        if state.last:
            full, control.full = control.full, None
            return _replace_hidden(output, full, control.flat, batch_first)
        return output

    @staticmethod
    def _enter(control: BypassControl, arguments: _Arguments, hidden_name: str, batch_first: bool) -> None:
        hidden = arguments.get(hidden_name)
        tokens = hidden if batch_first else hidden.transpose(0, 1)
        if tuple(tokens.shape[:2]) != (control.indices.shape[0], control.seq_len):
            raise RandomLTDError(f"TokenBypass chose indices for {control.indices.shape[0]} sequences of "
                                 f"{control.seq_len} tokens but the layer got hidden states {tuple(tokens.shape)}")
        control.full = tokens
        kept = ops.gather_tokens(tokens, control.flat, control.indices.shape[1])
        arguments.set_if_present(hidden_name, kept if batch_first else kept.transpose(0, 1))


def _bypass_class(original: type) -> type:
    subclass = _SUBCLASSES.get(original)
    if subclass is None:
        subclass = type(original.__name__, (TokenBypassLayerMixin, original), {"__module__": __name__})
        subclass.__qualname__ = f"TokenBypass[{original.__qualname__}]"
        _SUBCLASSES[original] = subclass
    return subclass


def wrap_range(members: list[nn.Module], control: BypassControl) -> None:
    for position, layer in enumerate(members):
        if is_wrapped(layer) or _STATE_ATTR in layer.__dict__:
            raise RandomLTDError(f"layer {type(layer).__name__} is already wrapped by random-LTD or TokenBypass")
        original = type(layer)
        layer.__dict__[_STATE_ATTR] = BypassLayerState(
            adapter=adapters.adapter_for(original), control=control, original_class=original,
            signature=_forward_signature(original), first=position == 0, last=position == len(members) - 1,
        )
        layer.__class__ = _bypass_class(original)


def unwrap(layer: nn.Module) -> None:
    state: BypassLayerState = layer.__dict__.pop(_STATE_ATTR)
    layer.__class__ = state.original_class


def is_bypassing(layer: nn.Module) -> bool:
    return _STATE_ATTR in layer.__dict__


class Selector:
    """Chooses the kept positions of a batch: special ids first, then importance, padding last."""

    def __init__(self, importance: TokenImportance, special_ids: tuple[int, ...], pad_id: int | None):
        self.importance = importance
        self.special_ids = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        self.pad_id = pad_id

    def padding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        padding = None if attention_mask is None else attention_mask == 0
        if self.pad_id is not None:
            by_id = input_ids == self.pad_id
            padding = by_id if padding is None else padding | by_id
        return padding

    def __call__(self, input_ids: torch.Tensor, keep: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, keep)`` kept positions per sequence, sorted ascending."""
        scores = token_scores(input_ids, self.importance.on(input_ids.device),
                              special_mask(input_ids, self.special_ids), self.padding(input_ids, attention_mask))
        return top_k_indices(scores, min(keep, input_ids.shape[1]))
