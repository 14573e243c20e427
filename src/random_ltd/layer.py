"""The dropping layer: the layer's own class with a ``forward`` that runs it on the kept tokens.

``wrap_layer`` swaps the layer's class (``random_ltd.swap``) for one whose ``forward``
1. binds the call's arguments by name (``random_ltd.calls``),
2. asks the model's selection strategy which tokens to keep (``random_ltd.strategies``), with the
   context of the forward this call belongs to (``random_ltd.contexts``),
3. splits the hidden states into kept tokens and the rest (``ops.split_tokens``),
4. gathers masks, positions and caches to the kept tokens (``random_ltd.gather``),
5. calls the original ``forward`` on them and merges its output back (``ops.merge_tokens``):
   dropped tokens pass through unchanged.
Random-LTD, protected tokens and TokenBypass differ only in the strategy of step 2. A strategy
with ``routes`` carries one kept subset through several layers instead (``random_ltd.routes``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn

from random_ltd import cache_keys, ops, routes, swap
from random_ltd.adapters.base import LayerAdapter
from random_ltd.attention.other_inputs import AttentionSetup, attention_setup
from random_ltd.calls import CallPlan, LayerCall
from random_ltd.contexts import ForwardContexts
from random_ltd.errors import RandomLTDError
from random_ltd.gather import gather_inputs, mask_fillers
from random_ltd.sharding import ShardedLayout
from random_ltd.strategies import RAN_ATTR, LayerInfo, Strategy

_STATE_ATTR = "_random_ltd_state"


class DropControl:
    """Shared by every wrapped layer of one model; owned by its handle.

    ``keep`` is the kept length (``None``: no dropping), ``strategy`` chooses the kept tokens
    (``random_ltd.strategies``), ``contexts`` holds its per-forward contexts (only for strategies
    with ``needs_context``). With ``dynamic_keep`` the layers read the kept length as the size of
    a tensor marked dynamic for ``torch.compile``: a compiled layer then has one graph for every
    kept length instead of one per length.
    """

    def __init__(self, strategy: Strategy, keep: int | None = None, dynamic_keep: bool = False):
        self.strategy = strategy
        self.contexts = ForwardContexts()
        self._dynamic_keep = dynamic_keep
        self.keep = keep

    @property
    def keep(self) -> int | None:
        return self._keep if self._keep_size is None else self._keep_size.shape[1]

    @keep.setter
    def keep(self, keep: int | None) -> None:
        self._keep = keep
        self._has_keep = keep is not None  # read by compiled layers instead of the int (no guard on its value)
        self._keep_size = None if keep is None or not self._dynamic_keep else _dynamic_size(keep)

    @property
    def dynamic_keep(self) -> bool:
        return self._dynamic_keep

    @dynamic_keep.setter
    def dynamic_keep(self, dynamic: bool) -> None:
        self._dynamic_keep = dynamic
        self.keep = self._keep

    @property
    def dropping(self) -> bool:
        """A kept length is set, or the strategy has its own (span routing's fractions): training drops."""
        return self._has_keep or getattr(self.strategy, "keeps_own_length", False)


def _dynamic_size(size: int) -> torch.Tensor:
    """An empty ``(0, size)`` tensor whose dim 1 Dynamo traces as a symbol, not a constant."""
    import torch._dynamo  # noqa: PLC0415  (imported only by those who compile)

    holder = torch.empty(0, size, device="cpu")  # only its size is read
    torch._dynamo.maybe_mark_dynamic(holder, 1)
    return holder


@dataclasses.dataclass
class LayerState:
    adapter: LayerAdapter
    info: LayerInfo
    control: DropControl
    original_class: type
    plan: CallPlan
    cache_layer_idx: int | None = None
    # The class's forward as a plain function, read once: diffusers marks its blocks
    # allow_in_graph, and Dynamo cannot trace reading `forward` off such a class inside a graph.
    original_forward: Callable = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.original_forward = self.original_class.forward

    @property
    def position(self) -> int:
        return self.info.position

    @position.setter
    def position(self, position: int) -> None:
        self.info.position = position
    attention: AttentionSetup | None = None


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
        if getattr(control.strategy, "weighted", False):  # Mixture-of-Depths: weighs the kept tokens' residual
            return _forward_weighted(self, state, LayerCall(state.plan, args, kwargs))
        if not self.training or not control.dropping:
            return super().forward(*args, **kwargs)
        call = LayerCall(state.plan, args, kwargs)
        hidden_name = state.adapter.hidden or state.plan.first()
        hidden = call.get(hidden_name)
        batch_first = _batch_first(self, state.adapter)
        strategy = control.strategy
        if getattr(strategy, "routes", False):
            return _forward_on_route(self, state, call, hidden_name, hidden, batch_first)
        seq_len = hidden.shape[1] if batch_first else hidden.shape[0]
        if keep >= seq_len or _cache_holds_tokens(state, call):
            return super().forward(*args, **kwargs)
        context = control.contexts.for_layer(state.info.position, hidden) if strategy.needs_context else None
        layout = _sharded_layout(hidden, batch_first)  # sequence parallel: DTensor hidden states
        hidden = hidden if layout is None else layout.to_full(hidden)
        tokens = hidden if batch_first else hidden.transpose(0, 1)
        shared = state.adapter.one_draw_per_batch
        indices = strategy.select(state.info, tokens[:1] if shared else tokens, keep, context)
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
    gather_inputs(layer, state.adapter, call, indices, seq_len, attention=state.attention)
    output = call.call(state.original_forward, layer)
    return replace_hidden(output, passthrough, flat, batch_first, layout, state.adapter.output_index)


def _forward_on_route(layer, state: LayerState, call: LayerCall, hidden_name: str, hidden: torch.Tensor,
                      batch_first: bool):
    """This layer's part of a route (``random_ltd.routes``): start, continue and/or end it."""
    control, original = state.control, state.original_forward
    if _cache_holds_tokens(state, call):
        return call.call(original, layer)
    if _sharded_layout(hidden, batch_first) is not None:
        raise RandomLTDError("routes do not support sequence-parallel (DTensor) hidden states yet")
    context = control.contexts.for_layer(state.info.position, hidden) if control.strategy.needs_context else None
    tokens = hidden if batch_first else hidden.transpose(0, 1)
    step = control.strategy.select(state.info, tokens, control.keep, context)
    if step is None:
        return call.call(original, layer)
    routes.check_gradient_path(tokens, step)
    route = step.route
    if step.first:
        tokens = route.start(tokens)
    else:
        route.check_continues(tokens)
    call[hidden_name] = tokens if batch_first else tokens.transpose(0, 1)
    gather_inputs(layer, state.adapter, call, route.indices, route.seq_len, memo=route.gathered,
                  attention=state.attention)
    output = call.call(original, layer)
    if not step.last:
        return output
    return replace_hidden(output, route.passthrough, route.flat, batch_first, index=state.adapter.output_index)


def _forward_weighted(layer, state: LayerState, call: LayerCall):
    """A weighted strategy's layer: the chosen tokens leave as ``x + w * (layer(x) - x)``, the rest as ``x``.

    Training asks ``select`` (any batch, no host sync); evaluation and generation ask
    ``select_causal``, whose choice of a token depends on that token alone, and keep the cache.
    """
    control = state.control
    hidden_name = state.adapter.hidden or state.plan.first()
    hidden = call.get(hidden_name)
    batch_first = _batch_first(layer, state.adapter)
    if _sharded_layout(hidden, batch_first) is not None:
        raise RandomLTDError("weighted strategies (Mixture-of-Depths) do not support sequence-parallel (DTensor) "
                             "hidden states yet")
    tokens = hidden if batch_first else hidden.transpose(0, 1)
    training = layer.training and not _cache_holds_tokens(state, call)
    if training:
        context = control.contexts.for_layer(state.info.position, hidden) if control.strategy.needs_context else None
        chosen = control.strategy.select(state.info, tokens, control.keep, context)
    else:
        chosen = control.strategy.select_causal(state.info, tokens)
    seq_len = tokens.shape[1]
    cache = None if training else _cache(state, call)
    held = None if cache is None else cache_keys.held_keys(cache, state.info.position, tokens.shape[0],
                                                           tokens.device, _cache_filled(state, call))
    filled = held is not None and held.seen > 0  # by the record: a layer no earlier token ran holds no key
    if filled and seq_len > 1:
        raise RandomLTDError("causal routing with a cache that holds tokens runs one new token per call; "
                             "several new tokens at once (chunked prefill) are not supported")
    if chosen.valid is not None and filled:
        raise RandomLTDError(f"causal routing: the new tokens of this batch route differently through layer "
                             f"{state.info.position} ({state.info.name}); generate one sequence per call")
    if held is not None:  # the cache takes the keys of the tokens that run: recorded by original position
        cache_keys.note_held_keys(cache, state.info.position,
                                  held.after(chosen.indices, seq_len, fillers=chosen.valid is not None))
    if training:
        return _run_weighted(layer, state, call, hidden_name, tokens, batch_first, chosen, None, training)
    # which slots ran, read by the MoE router loss's hook while the layer runs
    layer.__dict__[RAN_ATTR] = chosen.valid if chosen.indices.shape[1] else \
        torch.zeros(tokens.shape[0], 1, dtype=torch.bool, device=tokens.device)
    try:
        return _run_weighted(layer, state, call, hidden_name, tokens, batch_first, chosen,
                             held if filled else None, training)
    finally:
        layer.__dict__.pop(RAN_ATTR, None)


def _run_weighted(layer, state: LayerState, call: LayerCall, hidden_name: str, tokens: torch.Tensor,
                  batch_first: bool, chosen, held: cache_keys.HeldKeys | None, training: bool):
    """Run the layer on ``chosen``'s tokens; ``held``: the keys its cache holds, when a new token joins them."""
    original, index = state.original_forward, state.adapter.output_index
    kept_len, seq_len = chosen.indices.shape[1], tokens.shape[1]
    if kept_len == 0:  # no token runs the layer (nor enters its cache): its input, in its output's structure
        return _skipped(layer, state, call, hidden_name, tokens, batch_first)
    if held is not None:  # one new token runs: it attends the keys the layer's cache holds and its own
        keys = torch.cat([held.positions, held.seen + chosen.indices], dim=1)
        cache_keys.gather_key_inputs(state.adapter, call, keys, held.seen + seq_len)
        if state.adapter.prepare is not None:  # e.g. a window in original positions
            state.adapter.prepare(layer, call, keys)
    if kept_len == seq_len and chosen.valid is None:
        return _weigh(call.call(original, layer), tokens, chosen.weights, batch_first, index)
    flat = ops.flat_indices(chosen.indices, seq_len)
    kept, passthrough = ops.split_tokens(tokens, flat, kept_len)
    call[hidden_name] = kept if batch_first else kept.transpose(0, 1)
    gather_inputs(layer, state.adapter, call, chosen.indices, seq_len, attention=state.attention,
                  keep_caches=not training)
    if chosen.valid is not None:
        mask_fillers(layer, state.adapter, call, chosen.valid, state.attention, tokens.dtype)
    output = _weigh(call.call(original, layer), kept, chosen.weights, batch_first, index, chosen.valid)
    return replace_hidden(output, passthrough, flat, batch_first, index=index)


def _skipped(layer, state: LayerState, call: LayerCall, hidden_name: str, tokens: torch.Tensor, batch_first: bool):
    """The layer's input as its output, in the structure the layer returns (a tensor, or a tuple led by the
    hidden states), learnt from a call on each sequence's first token without its cache (other outputs, such
    as attention weights, are that call's)."""
    first = torch.zeros(tokens.shape[0], 1, dtype=torch.long, device=tokens.device)
    kept = ops.gather_tokens(tokens, ops.flat_indices(first, tokens.shape[1]), 1)
    call[hidden_name] = kept if batch_first else kept.transpose(0, 1)
    gather_inputs(layer, state.adapter, call, first, tokens.shape[1], attention=state.attention)
    output = call.call(state.original_forward, layer)
    return with_hidden(output, tokens if batch_first else tokens.transpose(0, 1), state.adapter.output_index)


def _weigh(output, kept: torch.Tensor, weights: torch.Tensor, batch_first: bool, index: int = 0,
           valid: torch.Tensor | None = None):
    """``output`` with its hidden states ``y`` (of the batch-first inputs ``kept``) made ``kept + w * (y - kept)``;
    ``kept`` itself where ``valid`` is False (fillers)."""
    short = output if isinstance(output, torch.Tensor) else output[index]
    short = short if batch_first else short.transpose(0, 1)
    weighed = kept + weights.unsqueeze(-1).to(kept.dtype) * (short - kept)
    if valid is not None:
        weighed = torch.where(valid.unsqueeze(-1), weighed, kept)
    return with_hidden(output, weighed if batch_first else weighed.transpose(0, 1), index)


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
    return with_hidden(output, full, index)


def with_hidden(output, full: torch.Tensor, index: int = 0):
    """A layer's ``output`` (a tensor, or a tuple/list/NamedTuple holding it at ``index``) with ``full`` as its
    hidden states."""
    if isinstance(output, torch.Tensor):
        return full
    if hasattr(output, "_fields"):  # a NamedTuple: built from its fields, not from one iterable
        return type(output)(*output[:index], full, *output[index + 1 :])
    merged = [*output[:index], full, *output[index + 1 :]]
    return type(output)(merged) if isinstance(output, tuple) else merged


def _cache_holds_tokens(state: LayerState, call: LayerCall) -> bool:
    """True while generating: a cache is passed and it already holds (or, with gradients off,
    is about to receive) this layer's keys and values. See the README's no-grad rule."""
    return _cache_filled(state, call, any_cache_when_no_grad=True)


def _cache(state: LayerState, call: LayerCall):
    """The KV cache object passed to this call, if any."""
    for name in state.adapter.caches:
        cache = call.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return cache
    return None


def _cache_filled(state: LayerState, call: LayerCall, any_cache_when_no_grad: bool = False) -> bool:
    """A cache passed to this call already holds this layer's keys and values."""
    for name in state.adapter.caches:
        cache = call.get(name)
        if cache is None or not hasattr(cache, "get_seq_length"):
            continue
        if any_cache_when_no_grad and not torch.is_grad_enabled():
            return True
        layer_idx = state.cache_layer_idx
        held = cache.get_seq_length(layer_idx) if layer_idx is not None else cache.get_seq_length()
        if held > 0:
            return True
    return False


def wrap_layer(layer: nn.Module, adapter: LayerAdapter, position: int, control: DropControl, name: str = "") -> None:
    info = LayerInfo(position, name, stream=_stream(control.strategy, position))
    state = LayerState(adapter, info, control, original_class=type(layer), plan=CallPlan.of(type(layer)),
                       cache_layer_idx=_find_layer_idx(layer), attention=attention_setup(layer, adapter))
    swap.swap(layer, RandomLTDLayerMixin, _STATE_ATTR, state)


def set_position(layer: nn.Module, position: int) -> None:
    """Renumber a wrapped layer (a pipeline stage's layer takes its place in the whole stack), or name it
    anew by its strategy's ``stream`` after the strategy changed (same position)."""
    info = layer_state(layer).info
    info.position = position
    info.stream = _stream(layer_state(layer).control.strategy, position)


def _stream(strategy: Strategy, position: int):
    stream = getattr(strategy, "stream", None)  # duck-typed strategies may have none
    return position if stream is None else stream(position)


def unwrap_layer(layer: nn.Module) -> None:
    swap.restore(layer, RandomLTDLayerMixin, _STATE_ATTR)


def check_unwrappable(layer: nn.Module) -> None:
    swap.check_restorable(layer, RandomLTDLayerMixin)


def is_wrapped(layer: nn.Module) -> bool:
    return swap.swapped_by(layer, _STATE_ATTR)


def layer_state(layer: nn.Module) -> LayerState:
    return layer.__dict__[_STATE_ATTR]
