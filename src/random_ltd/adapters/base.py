"""What a layer family needs for token dropping, and the registry that maps layer classes to it.

An adapter is data, not code: it names the arguments of the layer's ``forward`` that must be
gathered with the kept tokens. The wrapper (``random_ltd.layer``) does the work for every family.
A family with inputs that names alone cannot describe supplies a ``prepare`` hook.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import torch.nn as nn

from random_ltd.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LayerAdapter:
    """How to drop tokens around one family of transformer layers.

    Attributes:
        name: family name shown in reports.
        hidden: name of the ``forward`` parameter holding ``(B, s, d)`` hidden states;
            ``None`` means the first parameter.
        masks: parameters holding attention masks ``(B or 1, H, q, s)`` (or ``(s, s)``).
        query_masks: cross-attention masks ``(B, H, s, s_other)``: only queries are gathered.
        padding_masks: parameters holding ``(B, s)`` key-padding masks.
        bool_means_keep: boolean masks say True = attend (Hugging Face) or True = blocked (PyTorch).
        positions: per-token tensors ``(B or 1, s)``, e.g. ``position_ids``.
        key_biases: per-key attention biases ``(B*heads, 1, s)``, e.g. ALiBi's ``alibi``.
        position_pairs: tuples of per-token tensors ``(B or 1, s, d)``, e.g. rotary ``(cos, sin)``.
        caches: key/value cache parameters; a dropping call passes ``None`` (nothing to cache),
            and a call whose cache already holds tokens for this layer never drops.
        use_cache: a boolean flag switched off in a dropping call.
        passthrough: parameters that hold no per-token values (flags, other sequences) and pass
            unchanged; with the fields above they are the parameters a family predicate knows.
        num_prefix_tokens: prefix tokens (a ViT's CLS) kept when the user asks to keep them.
        batch_first: ``layer -> bool``; ``None`` means batch first (all Hugging Face layers).
        prepare: ``(layer, arguments, indices) -> None`` for inputs the fields above cannot
            describe; ``arguments`` maps parameter names to values and is edited in place.
        output_index: where the hidden states are in a tuple output (diffusers' joint blocks
            return ``(text, image)``: 1); the other elements pass unchanged.
        one_draw_per_batch: every sequence of a batch keeps the same tokens, for inputs shared
            by the whole batch that the layer cannot take per sequence.
        shared_position_pairs: tuples of unbatched per-token tables ``(t + s, d)`` whose last
            ``s`` rows belong to the hidden states and the first ``t`` to another stream (Flux's
            rotary table: text, then image); only the last ``s`` rows are gathered. Needs
            ``one_draw_per_batch``.
        check: ``layer -> None``, raises ``RandomLTDError`` at ``apply`` for a layer of the family
            that cannot drop tokens (checked before the model is touched).
    """

    name: str
    hidden: str | None = None
    masks: tuple[str, ...] = ()
    query_masks: tuple[str, ...] = ()
    padding_masks: tuple[str, ...] = ()
    bool_means_keep: bool = True
    positions: tuple[str, ...] = ()
    key_biases: tuple[str, ...] = ()
    position_pairs: tuple[str, ...] = ()
    caches: tuple[str, ...] = ()
    use_cache: str | None = None
    passthrough: tuple[str, ...] = ()
    num_prefix_tokens: int = 0
    batch_first: Callable[[nn.Module], bool] | None = None
    prepare: Callable[[nn.Module, dict, object], None] | None = None
    output_index: int = 0
    one_draw_per_batch: bool = False
    shared_position_pairs: tuple[str, ...] = ()
    check: Callable[[nn.Module], None] | None = None

    def __post_init__(self) -> None:
        if self.shared_position_pairs and not self.one_draw_per_batch:
            raise ConfigError("shared_position_pairs", f"adapter {self.name!r}: needs one_draw_per_batch=True (one "
                              "table serves every sequence, so every sequence keeps the same tokens)")


_BY_KEY: dict[str, LayerAdapter] = {}
_PREDICATES: list[tuple[Callable[[type], bool], LayerAdapter]] = []


def class_key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_layer(layer_class: type | str, adapter: LayerAdapter | None = None, **fields) -> LayerAdapter:
    """Register a layer class (or its dotted ``module.QualName``) for random-LTD.

    ``register_layer(Block)`` is enough for a layer called as ``block(x) -> x``. Pass
    ``LayerAdapter`` fields as keywords for masks, positions or caches, e.g.
    ``register_layer(MyLayer, masks=("attn_mask",), positions=("pos",))``. Subclasses of a
    registered class use its adapter. Returns the adapter.
    """
    key = layer_class if isinstance(layer_class, str) else class_key(layer_class)
    if adapter is None:
        fields.setdefault("name", key.rsplit(".", 1)[-1])
        adapter = LayerAdapter(**fields)
    elif fields:
        adapter = dataclasses.replace(adapter, **fields)
    _BY_KEY[key] = adapter
    return adapter


def known_parameters(adapter: LayerAdapter) -> set[str]:
    """The ``forward`` parameters ``adapter`` gathers, resets or passes on knowingly."""
    named = (adapter.masks, adapter.query_masks, adapter.padding_masks, adapter.positions, adapter.key_biases,
             adapter.position_pairs, adapter.shared_position_pairs, adapter.caches, adapter.passthrough)
    return {name for names in named for name in names} | {adapter.hidden, adapter.use_cache} - {None}


def unknown_parameters(adapter: LayerAdapter, layer_class: type) -> list[str]:
    """Parameters of ``layer_class.forward`` (bar ``self`` and ``**kwargs``) that ``adapter`` does not know."""
    parameters = list(inspect.signature(layer_class.forward).parameters.values())[1:]
    known = known_parameters(adapter)
    return [p.name for p in parameters if p.kind is not p.VAR_KEYWORD and p.name not in known]


def register_family(predicate: Callable[[type], bool], adapter: LayerAdapter) -> None:
    """Register an adapter for every layer class ``predicate`` accepts (checked after exact keys)."""
    _PREDICATES.append((predicate, adapter))


def unregister_layer(layer_class: type | str) -> None:
    key = layer_class if isinstance(layer_class, str) else class_key(layer_class)
    _BY_KEY.pop(key, None)


def adapter_for(layer_class: type) -> LayerAdapter | None:
    """The adapter for ``layer_class``: exact or inherited registration first, then families."""
    for cls in layer_class.__mro__:
        adapter = _BY_KEY.get(class_key(cls))
        if adapter is not None:
            return adapter
    for predicate, adapter in _PREDICATES:
        if predicate(layer_class):
            return adapter
    return None


def registered_names() -> list[str]:
    return sorted(_BY_KEY) + [adapter.name + " (family)" for _, adapter in _PREDICATES]
