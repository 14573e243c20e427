"""The dropping layer: the layer's own class with a ``forward`` that runs it on the kept tokens.

``wrap_layer`` swaps the layer's class (``random_ltd.swap``) for one whose ``forward``
1. binds the call's arguments by name (``random_ltd.calls``),
2. asks the model's selection strategy which tokens to keep (``random_ltd.selection``),
3. splits the hidden states into kept tokens and the rest (``ops.split_tokens``),
4. gathers masks, positions and caches to the kept tokens (``random_ltd.inputs``),
5. calls the original ``forward`` on them and merges its output back (``ops.merge_tokens``):
   dropped tokens pass through unchanged.
Random-LTD, protected tokens and TokenBypass differ only in the strategy of step 2.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn

from random_ltd import ops, swap
from random_ltd.adapters.base import LayerAdapter
from random_ltd.calls import CallPlan, LayerCall
from random_ltd.inputs import gather_inputs
from random_ltd.selection import ForwardContext, Selection
from random_ltd.sharding import ShardedLayout

_STATE_ATTR = "_random_ltd_state"


@dataclasses.dataclass
class DropControl:
    """Shared by every wrapped layer of one model; owned by its handle.

    ``keep`` is the kept length (``None``: no dropping), ``selection`` the strategy choosing the
    kept tokens, ``context`` what the model's inputs told the strategy about this forward pass
    (only for strategies with ``needs_context``).
    """

    selection: Selection
    keep: int | None = None
    context: ForwardContext = dataclasses.field(default_factory=ForwardContext)


@dataclasses.dataclass
class LayerState:
    adapter: LayerAdapter
    position: int
    control: DropControl
    original_class: type
    plan: CallPlan
    cache_layer_idx: int | None = None
    # The class's forward as a plain function, read once: diffusers marks its blocks
    # allow_in_graph, and Dynamo cannot trace reading `forward` off such a class inside a graph.
    original_forward: Callable = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.original_forward = self.original_class.forward


def _find_layer_idx(layer: nn.Module) -> int | None:
    for module in layer.modules():
        for attribute in ("layer_idx", "layer_id"):  # GPT-Neo names it layer_id
            layer_idx = getattr(module, attribute, None)
            if isinstance(layer_idx, int):
                return layer_idx
    return None


class RandomLTDLayerMixin(swap.SwappedModule):
    """Placed first in the MRO of the swapped-in class; see the module docstring."""

    _swap_label = "RandomLTD"

    def forward(self, *args, **kwargs):
        state: LayerState = self.__dict__[_STATE_ATTR]
        control = state.control
        keep = control.keep
        if not self.training or keep is None:
            return super().forward(*args, **kwargs)
        call = LayerCall(state.plan, args, kwargs)
        hidden_name = state.adapter.hidden or state.plan.first()
        hidden = call.get(hidden_name)
        batch_first = _batch_first(self, state.adapter)
        seq_len = hidden.shape[1] if batch_first else hidden.shape[0]
        if keep >= seq_len or _cache_holds_tokens(state, call):
            return super().forward(*args, **kwargs)
        layout = _sharded_layout(hidden, batch_first)  # sequence parallel: DTensor hidden states
        hidden = hidden if layout is None else layout.to_full(hidden)
        tokens = hidden if batch_first else hidden.transpose(0, 1)
        context = control.context.for_layer(state.position, hidden) if control.selection.needs_context else None
        shared = state.adapter.one_draw_per_batch
        indices = control.selection(state.position, tokens[:1] if shared else tokens, keep, context)
        if indices is None or indices.shape[1] >= tokens.shape[1]:
            return super().forward(*args, **kwargs)
        if shared:
            indices = indices.expand(tokens.shape[0], -1)
        return _forward_on_kept(self, state, call, hidden_name, tokens, indices, batch_first, layout)


def _batch_first(layer: nn.Module, adapter: LayerAdapter) -> bool:
    return adapter.batch_first is None or adapter.batch_first(layer)


def _sharded_layout(hidden: torch.Tensor, batch_first: bool):
    """A ``DTensor``'s layout (sequence parallel), else ``None`` (``random_ltd.sharding``)."""
    if type(hidden) is torch.Tensor:
        return None
    return ShardedLayout.of(hidden, sequence_dim=1 if batch_first else 0)


def _forward_on_kept(layer, state: LayerState, call: LayerCall, hidden_name: str, tokens: torch.Tensor,
                     indices: torch.Tensor, batch_first: bool, layout=None):
    seq_len = tokens.shape[1]
    flat = ops.flat_indices(indices, seq_len)
    kept, passthrough = ops.split_tokens(tokens, flat, indices.shape[1])
    kept = kept if batch_first else kept.transpose(0, 1)
    call[hidden_name] = kept if layout is None else layout.to_sharded(kept)
    gather_inputs(layer, state.adapter, call, indices, seq_len)
    output = call.call(state.original_forward, layer)
    return replace_hidden(output, passthrough, flat, batch_first, layout, state.adapter.output_index)


def replace_hidden(output, passthrough: torch.Tensor, flat: torch.Tensor, batch_first: bool, layout=None,
                   index: int = 0):
    """Merge the layer's short output into the full sequence, keeping the output's structure.

    ``layout``: the input's sequence-parallel layout, if any (the output is gathered, merged and
    sharded back like the input). ``index``: where the hidden states are in a tuple output.
    """
    short = output if isinstance(output, torch.Tensor) else output[index]
    short = short if layout is None else layout.to_full(short)
    short = short if batch_first else short.transpose(0, 1)
    full = ops.merge_tokens(passthrough, short, flat)
    full = full if batch_first else full.transpose(0, 1)
    full = full if layout is None else layout.to_sharded(full)
    if isinstance(output, torch.Tensor):
        return full
    merged = [*output[:index], full, *output[index + 1 :]]
    return type(output)(merged) if isinstance(output, tuple) else merged


def _cache_holds_tokens(state: LayerState, call: LayerCall) -> bool:
    """True while generating: a cache is passed and it already holds (or, with gradients off,
    is about to receive) this layer's keys and values. See the README's no-grad rule."""
    for name in state.adapter.caches:
        cache = call.get(name)
        if cache is None or not hasattr(cache, "get_seq_length"):
            continue
        if not torch.is_grad_enabled():
            return True
        layer_idx = state.cache_layer_idx
        held = cache.get_seq_length(layer_idx) if layer_idx is not None else cache.get_seq_length()
        if held > 0:
            return True
    return False


def wrap_layer(layer: nn.Module, adapter: LayerAdapter, position: int, control: DropControl) -> None:
    state = LayerState(adapter, position, control, original_class=type(layer), plan=CallPlan.of(type(layer)),
                       cache_layer_idx=_find_layer_idx(layer))
    swap.swap(layer, RandomLTDLayerMixin, _STATE_ATTR, state)


def unwrap_layer(layer: nn.Module) -> None:
    swap.restore(layer, RandomLTDLayerMixin, _STATE_ATTR)


def check_unwrappable(layer: nn.Module) -> None:
    swap.check_restorable(layer, RandomLTDLayerMixin)


def is_wrapped(layer: nn.Module) -> bool:
    return swap.swapped_by(layer, _STATE_ATTR)


def layer_state(layer: nn.Module) -> LayerState:
    return layer.__dict__[_STATE_ATTR]
