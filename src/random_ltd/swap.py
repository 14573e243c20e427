"""Swapping a module's class for a subclass that adds behaviour: the one surgery mechanism.

``swap(module, mixin, attr, state)`` sets ``module.__class__`` to ``(mixin, original)`` and keeps
``state`` in the module's ``__dict__`` under ``attr``. Nothing else changes: parameters, buffers,
``state_dict`` keys, hooks, and ``isinstance(module, original)`` (which Hugging Face's
``output_hidden_states`` and gradient checkpointing rely on). The swapped classes are made once
per ``(mixin, original)`` and pickle by reference to that pair, so ``torch.save(model)`` and
``copy.deepcopy`` work although the classes are not importable by name.
"""
from __future__ import annotations

import torch.nn as nn

from random_ltd.errors import RandomLTDError

_CLASSES: dict[tuple[type, type], type] = {}
_PAIRS: dict[type, tuple[type, type]] = {}


class SwappedModule:
    """Base of every mixin used with ``swap``: pickling by ``(mixin, original)``."""

    _swap_label = "Swapped"

    def __reduce_ex__(self, protocol):
        pair = _PAIRS.get(type(self))
        if pair is None:  # a class swapped in over ours (e.g. by fully_shard): its own rules apply
            return super().__reduce_ex__(protocol)
        return _rebuild, pair, self.__dict__


def swapped_class(mixin: type, original: type) -> type:
    """The cached subclass ``(mixin, original)``; same name, so reprs read alike."""
    cls = _CLASSES.get((mixin, original))
    if cls is None:
        cls = type(original.__name__, (mixin, original), {"__module__": mixin.__module__})
        cls.__qualname__ = f"{mixin._swap_label}[{original.__qualname__}]"
        _CLASSES[(mixin, original)] = cls
        _PAIRS[cls] = (mixin, original)
    return cls


def _rebuild(mixin: type, original: type) -> nn.Module:
    return object.__new__(swapped_class(mixin, original))


def swap(module: nn.Module, mixin: type, attr: str, state: object) -> None:
    module.__dict__[attr] = state
    module.__class__ = swapped_class(mixin, type(module))


def swapped_by(module: nn.Module, attr: str) -> bool:
    return attr in module.__dict__


def original_class(module: nn.Module) -> type:
    pair = _PAIRS.get(type(module))
    return type(module) if pair is None else pair[1]


def check_restorable(module: nn.Module, mixin: type) -> None:
    """Refuse to restore a module whose class was changed again after the swap."""
    pair = _PAIRS.get(type(module))
    if pair is None or pair[0] is not mixin:
        raise RandomLTDError(
            f"the class of this {type(module).__name__} was changed after random-LTD was applied "
            "(e.g. by fully_shard): restoring it would undo that change. Apply random-LTD after such "
            "wrapping (see random_ltd.integrations.distributed.shard_layers)"
        )


def restore(module: nn.Module, mixin: type, attr: str) -> object:
    """Undo ``swap``; returns the state it kept."""
    check_restorable(module, mixin)
    module.__class__ = _PAIRS[type(module)][1]
    return module.__dict__.pop(attr)
