"""Random-LTD that always keeps special tokens: the variant the paper tests and rejects (Section 5.2).

Applied on top of ``random_ltd.apply``: each wrapped layer's class is swapped once more, to a
subclass whose sampling puts the positions holding a special id ([CLS], [SEP], ...) first and
draws the rest uniformly, with the same counter-based seed as plain random-LTD. Positions are
found from the model's ``input_ids`` by a forward pre-hook. Only for the ablation study: the
paper's method keeps no token on purpose.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn as nn

from random_ltd.errors import RandomLTDError
from random_ltd.layer import RandomLTDLayerMixin, is_wrapped, layer_state
from random_ltd.rng import derive_seed
from random_ltd.surgery import RandomLTDHandle, get_handle

_ATTR = "_random_ltd_protected"
_SUBCLASSES: dict[type, type] = {}


class _Protected:
    """This forward pass's positions to keep, shared by the layers of one model."""

    def __init__(self, special_ids: Sequence[int]):
        self.special_ids = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        self.positions: torch.Tensor | None = None


class ProtectedSamplingMixin:
    def _sample(self, state, batch: int, seq_len: int, keep: int, device) -> torch.Tensor:
        positions = self.__dict__[_ATTR].positions
        if positions is None:
            return super()._sample(state, batch, seq_len, keep, device)
        control = state.control
        generator = state.generators.seeded(device, derive_seed(control.seed, state.position, control.forward_count))
        keys = torch.rand(batch, seq_len, generator=generator, device=device)
        keys = keys.masked_fill(positions.to(device), 2.0)  # above every uniform key: chosen first
        return keys.topk(keep, dim=1, sorted=False).indices.sort(dim=1).values


def _protected_class(dropping: type) -> type:
    subclass = _SUBCLASSES.get(dropping)
    if subclass is None:
        subclass = type(dropping.__name__, (ProtectedSamplingMixin, dropping), {"__module__": __name__})
        _SUBCLASSES[dropping] = subclass
    return subclass


def protect_special_tokens(model: nn.Module, special_ids: Sequence[int]) -> RandomLTDHandle:
    """Make the random-LTD already applied to ``model`` always keep ``special_ids``."""
    handle = get_handle(model)
    if handle is None:
        raise RandomLTDError("apply random-LTD first (random_ltd.apply), then protect its special tokens")
    protected = _Protected(special_ids)
    for module in model.modules():
        if is_wrapped(module) and layer_state(module).control is handle._control:
            if not isinstance(module, RandomLTDLayerMixin):
                raise RandomLTDError(f"{type(module).__name__} is not a random-LTD layer")
            module.__dict__[_ATTR] = protected
            module.__class__ = _protected_class(type(module))
    signature = inspect.signature(model.forward)

    def find_special(module, args, kwargs):
        input_ids = signature.bind_partial(*args, **kwargs).arguments.get("input_ids")
        if input_ids is None or protected.special_ids.numel() == 0:
            protected.positions = None
        else:
            protected.positions = torch.isin(input_ids, protected.special_ids.to(input_ids.device))

    model.__dict__[_ATTR] = model.register_forward_pre_hook(find_special, with_kwargs=True)
    return handle


def unprotect(model: nn.Module) -> None:
    """Undo ``protect_special_tokens`` (plain random-LTD again; ``random_ltd.remove`` works after)."""
    hook = model.__dict__.pop(_ATTR, None)
    if hook is None:
        raise RandomLTDError("special tokens are not protected on this model")
    hook.remove()
    for module in model.modules():
        if _ATTR in module.__dict__:
            del module.__dict__[_ATTR]
            module.__class__ = type(module).__bases__[-1]  # the random-LTD class under ours
