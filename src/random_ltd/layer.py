"""The dropping layer: a subclass swapped in for the original layer class (no new module).

``wrap_layer`` sets ``layer.__class__`` to a subclass of the layer's own class whose ``forward``
gathers the kept tokens (with masks and positions), calls the original ``forward`` on them and
scatters the result back. Parameters, buffers, ``state_dict`` keys, hooks matched by
``isinstance`` (Hugging Face's ``output_hidden_states``) and gradient checkpointing all stay.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch
import torch.nn as nn

from random_ltd import ops
from random_ltd.adapters.base import LayerAdapter
from random_ltd.errors import RandomLTDError
from random_ltd.rng import GeneratorPool, derive_seed


@dataclasses.dataclass
class DropControl:
    """State shared by every wrapped layer of one model; owned by its ``RandomLTDHandle``.

    ``keep`` is the kept length (``None``: no dropping). ``forward_count`` counts forward passes
    of the root model; with ``seed`` and a layer's position it determines the layer's indices.
    """

    seed: int
    keep: int | None = None
    forward_count: int = 0
    keep_prefix_tokens: bool = False


@dataclasses.dataclass
class LayerState:
    adapter: LayerAdapter
    position: int
    control: DropControl
    original_class: type
    signature: inspect.Signature
    generators: GeneratorPool = dataclasses.field(default_factory=GeneratorPool)
    cache_layer_idx: int | None = None


_SUBCLASSES: dict[type, type] = {}
_STATE_ATTR = "_random_ltd_state"


def _forward_signature(cls: type) -> inspect.Signature:
    signature = inspect.signature(cls.forward)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _find_layer_idx(layer: nn.Module) -> int | None:
    for module in layer.modules():
        layer_idx = getattr(module, "layer_idx", None)
        if isinstance(layer_idx, int):
            return layer_idx
    return None


class _Arguments:
    """Named view over bound call arguments, including names that travel in ``**kwargs``."""

    def __init__(self, bound: inspect.BoundArguments) -> None:
        self.bound = bound
        self.var_keyword = next(
            (p.name for p in bound.signature.parameters.values() if p.kind is p.VAR_KEYWORD), None
        )

    def _home(self, name: str) -> dict:
        if name in self.bound.arguments or self.var_keyword is None:
            return self.bound.arguments
        return self.bound.arguments.setdefault(self.var_keyword, {})

    def get(self, name: str):
        return self._home(name).get(name)

    def set_if_present(self, name: str, value) -> None:
        home = self._home(name)
        if name in home:
            home[name] = value


class RandomLTDLayerMixin:
    """Placed first in the MRO of the swapped-in class; see the module docstring."""

    def forward(self, *args, **kwargs):
        state: LayerState = self.__dict__[_STATE_ATTR]
        keep = state.control.keep
        if not self.training or keep is None:
            return super().forward(*args, **kwargs)
        arguments = _Arguments(state.signature.bind(*args, **kwargs))
        hidden_name = state.adapter.hidden or next(iter(state.signature.parameters))
        hidden = arguments.get(hidden_name)
        batch_first = state.adapter.batch_first is None or state.adapter.batch_first(self)
        batch, seq_len = hidden.shape[:2] if batch_first else hidden.shape[1::-1]
        if keep >= seq_len or self._cache_holds_tokens(state, arguments):
            return super().forward(*args, **kwargs)
        layout = _sharded_layout(hidden, batch_first)  # sequence parallel: DTensor hidden states
        hidden = hidden if layout is None else layout.to_full(hidden)
        tokens = hidden if batch_first else hidden.transpose(0, 1)

        if torch.compiler.is_compiling():
            indices = _sample_outside_graphs(self, state, batch, seq_len, keep, tokens.device)
        else:
            indices = self._sample(state, batch, seq_len, keep, tokens.device)
        flat = ops.flat_indices(indices, seq_len)
        kept, passthrough = ops.split_tokens(tokens, flat, keep)
        kept = kept if batch_first else kept.transpose(0, 1)
        arguments.set_if_present(hidden_name, kept if layout is None else layout.to_sharded(kept))
        _gather_inputs(self, state.adapter, arguments, indices, seq_len)
        output = super().forward(*arguments.bound.args, **arguments.bound.kwargs)
        return _replace_hidden(output, passthrough, flat, batch_first, merge=ops.merge_tokens, layout=layout)

    def _sample(self, state: LayerState, batch: int, seq_len: int, keep: int, device) -> torch.Tensor:
        control = state.control
        seed = derive_seed(control.seed, state.position, control.forward_count)
        generator = state.generators.seeded(device, seed)
        prefix = state.adapter.num_prefix_tokens if control.keep_prefix_tokens else 0
        return ops.sample_indices(batch, seq_len, keep, generator=generator, device=device, num_prefix=min(prefix, keep))

    def _cache_holds_tokens(self, state: LayerState, arguments: _Arguments) -> bool:
        """True while generating: the cache already holds this layer's keys and values."""
        for name in state.adapter.caches:
            cache = arguments.get(name)
            if cache is None or not hasattr(cache, "get_seq_length"):
                continue
            if not torch.is_grad_enabled():
                return True
            layer_idx = state.cache_layer_idx
            held = cache.get_seq_length(layer_idx) if layer_idx is not None else cache.get_seq_length()
            if held > 0:
                return True
        return False


def _sharded_layout(hidden: torch.Tensor, batch_first: bool):
    """A ``DTensor``'s layout (sequence parallel), else ``None``; see integrations/tensor_parallel.py."""
    if type(hidden) is torch.Tensor:
        return None
    from random_ltd.integrations.tensor_parallel import ShardedLayout  # noqa: PLC0415  (import cycle)

    return ShardedLayout.of(hidden, sequence_dim=1 if batch_first else 0)


# torch.compiler.disable, but importing torch._dynamo only when the function is first called
# (under torch.compile): at import time it would cost every ``import random_ltd`` seconds.
_disable_dynamo = getattr(torch, "_disable_dynamo", None) or torch.compiler.disable


@_disable_dynamo
def _sample_outside_graphs(layer: RandomLTDLayerMixin, *args) -> torch.Tensor:
    """``layer._sample`` run eagerly under torch.compile: seeding a generator cannot be traced,
    and tracing the seed arithmetic would guard on the forward count (a recompile per step)."""
    return layer._sample(*args)


def _gather_inputs(
    layer: nn.Module, adapter: LayerAdapter, arguments: _Arguments, indices: torch.Tensor, seq_len: int
) -> None:
    for name in adapter.masks:
        mask = arguments.get(name)
        if mask is not None:
            _check_tensor_mask(name, mask)
            gathered = ops.gather_mask(mask, indices)
            arguments.set_if_present(name, ops.attend_somewhere(gathered, adapter.bool_means_keep))
    for name in adapter.query_masks:
        mask = arguments.get(name)
        if mask is not None and mask.shape[-2] == seq_len:
            arguments.set_if_present(name, ops.gather_sequence(mask, indices, dim=mask.dim() - 2))
    for name in adapter.padding_masks:
        mask = arguments.get(name)
        if mask is not None:
            arguments.set_if_present(name, ops.attend_somewhere(ops.gather_sequence(mask, indices), adapter.bool_means_keep))
    for name in adapter.positions:
        positions = arguments.get(name)
        if positions is not None:
            arguments.set_if_present(name, ops.gather_sequence(positions, indices))
    for name in adapter.position_pairs:
        pair = arguments.get(name)
        if pair is not None:
            arguments.set_if_present(name, tuple(ops.gather_sequence(part, indices) for part in pair))
    for name in adapter.caches:
        arguments.set_if_present(name, None)
    if adapter.use_cache:
        arguments.set_if_present(adapter.use_cache, False)
    if adapter.prepare is not None:
        adapter.prepare(layer, arguments.bound.arguments, indices)


def _check_tensor_mask(name: str, mask) -> None:
    if not isinstance(mask, torch.Tensor):
        raise RandomLTDError(
            f"{name} is a {type(mask).__name__}, not a tensor: this attention implementation (e.g. flex "
            "attention's BlockMask) is not supported; use attn_implementation='sdpa' or 'eager'"
        )


def _replace_hidden(output, tokens: torch.Tensor, flat: torch.Tensor, batch_first: bool, merge=None, layout=None):
    """Scatter the layer's short output into the full sequence, keeping the output's structure.

    ``merge`` is ``ops.merge_tokens`` when ``tokens`` is the passthrough of ``ops.split_tokens``;
    by default ``ops.scatter_tokens``. ``layout``: the input's sequence-parallel layout, if any.
    """
    short = output if isinstance(output, torch.Tensor) else output[0]
    short = short if layout is None else layout.to_full(short)
    short = short if batch_first else short.transpose(0, 1)
    full = (merge or ops.scatter_tokens)(tokens, short, flat)
    full = full if batch_first else full.transpose(0, 1)
    full = full if layout is None else layout.to_sharded(full)
    if isinstance(output, torch.Tensor):
        return full
    return type(output)((full, *output[1:])) if isinstance(output, tuple) else [full, *output[1:]]


def dropping_class(original: type) -> type:
    """The (cached) subclass of ``original`` that drops tokens; same name, so reprs read alike."""
    subclass = _SUBCLASSES.get(original)
    if subclass is None:
        subclass = type(original.__name__, (RandomLTDLayerMixin, original), {"__module__": __name__})
        subclass.__qualname__ = f"RandomLTD[{original.__qualname__}]"
        _SUBCLASSES[original] = subclass
    return subclass


def wrap_layer(layer: nn.Module, adapter: LayerAdapter, position: int, control: DropControl) -> None:
    original = type(layer)
    state = LayerState(
        adapter=adapter,
        position=position,
        control=control,
        original_class=original,
        signature=_forward_signature(original),
        cache_layer_idx=_find_layer_idx(layer),
    )
    layer.__dict__[_STATE_ATTR] = state
    layer.__class__ = dropping_class(original)


def unwrap_layer(layer: nn.Module) -> None:
    check_unwrappable(layer)
    state: LayerState = layer.__dict__.pop(_STATE_ATTR)
    layer.__class__ = state.original_class


def check_unwrappable(layer: nn.Module) -> None:
    state: LayerState = layer.__dict__[_STATE_ATTR]
    if type(layer) is not dropping_class(state.original_class):
        raise RandomLTDError(
            f"the class of this {state.original_class.__name__} was changed after random-LTD was applied "
            f"(now {type(layer).__name__}, e.g. by fully_shard): restoring it would undo that change. "
            "Apply random-LTD after such wrapping (see random_ltd.integrations.distributed.shard_layers)"
        )


def is_wrapped(layer: nn.Module) -> bool:
    return _STATE_ATTR in layer.__dict__


def layer_state(layer: nn.Module) -> LayerState:
    return layer.__dict__[_STATE_ATTR]
