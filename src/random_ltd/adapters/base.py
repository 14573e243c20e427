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
             adapter.position_pairs, adapter.caches, adapter.passthrough)
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
