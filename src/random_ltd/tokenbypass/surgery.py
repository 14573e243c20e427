"""``apply`` / ``remove`` for TokenBypass, and the handle that sets the kept length and learns
the importance."""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn as nn

from random_ltd import adapters
from random_ltd.errors import RandomLTDError
from random_ltd.layer import DropControl, is_wrapped, layer_state, unwrap_layer, wrap_layer
from random_ltd.layer_selection import parse_layer_selection
from random_ltd.surgery import check_keep, find_layer_stack
from random_ltd.swap import original_class
from random_ltd.tokenbypass.bypass import ChosenIndices, Selector
from random_ltd.tokenbypass.importance import TokenImportance

_HANDLE_ATTR = "_token_bypass_handle"
_CACHE_NAMES = ("cache", "past_key_values")
# The paper's two settings, as 0-based slices of an L-layer stack. "middle" is Hou et al.'s
# sandwich: the first half (1-based L1..L(L/2-1)) and the last layer full, 1-based L(L/2)..L(L-1)
# bypassed (L12..L23 of 24). "second": 1-based L2..L(L-1), the layers random-LTD drops in.
NAMED_RANGES = {"middle": lambda layers: (layers // 2 - 1, layers - 1), "second": lambda layers: (1, layers - 1)}


def bypass_range(selection: str | Sequence[int], num_layers: int) -> list[int]:
    """``"middle"``, ``"second"``, a slice string (``"3:-1"``) or indices -> contiguous indices."""
    if isinstance(selection, str) and selection in NAMED_RANGES:
        start, stop = NAMED_RANGES[selection](num_layers)
        selection = list(range(max(start, 0), stop))
    chosen = parse_layer_selection(selection, num_layers)
    if chosen != list(range(chosen[0], chosen[-1] + 1)):
        raise RandomLTDError(f"TokenBypass needs a contiguous range of layers, got {chosen}")
    return chosen


class TokenBypassHandle:
    """What ``apply`` returns. ``set_keep(k)`` sets the tokens kept in the bypassed range
    (``None``: no bypass; ``k >= s`` runs the range on every token). After each training step
    call ``update(token_ids, per_token_loss)``. Exposes ``num_layers`` / ``drop_layers`` /
    ``state_dict`` like ``RandomLTDHandle``, so ``random_ltd.Driver`` can drive and count it."""

    def __init__(self, model: nn.Module, layers: list[int], num_layers: int, control: DropControl,
                 selector: Selector):
        self.model = model
        self.drop_layers = layers
        self.num_layers = num_layers
        self.selector = selector
        self._control = control
        self._signature = inspect.signature(model.forward)
        self._hook = model.register_forward_pre_hook(self._choose, with_kwargs=True)

    @property
    def importance(self) -> TokenImportance:
        return self.selector.importance

    @property
    def keep(self) -> int | None:
        return self._control.keep

    @property
    def indices(self) -> torch.Tensor | None:
        """The kept positions ``(B, k)`` of the latest forward pass (``None``: nothing bypassed)."""
        return self._control.context.current

    def set_keep(self, keep: int | None) -> None:
        self._control.keep = check_keep(keep)

    def update(self, token_ids: torch.Tensor, per_token_loss: torch.Tensor) -> None:
        self.importance.update(token_ids, per_token_loss)

    def _choose(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._control.context.set(None)
        if not module.training or self.keep is None:
            return
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        if _cache_holds_tokens(bound):
            return
        input_ids = bound.get("input_ids")
        if input_ids is None:
            raise RandomLTDError("TokenBypass ranks tokens by their ids: call the model with input_ids")
        self._control.context.set(self.selector(input_ids, self.keep, bound.get("attention_mask")))

    def state_dict(self) -> dict:
        return {"keep": self.keep, "importance": self.importance.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.set_keep(state.get("keep"))
        self.importance.load_state_dict(state["importance"])

    def remove(self) -> None:
        remove(self.model)

    def __repr__(self) -> str:
        return f"TokenBypassHandle(layers={self.drop_layers} of {self.num_layers}, keep={self._keep})"


def _cache_holds_tokens(bound: dict) -> bool:
    """True while generating with a cache that already holds tokens (never bypass then)."""
    for name in _CACHE_NAMES:
        cache = bound.get(name)
        if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
            return True
    return False


def _vocab_size(model: nn.Module) -> int:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, nn.Embedding):
        return embeddings.num_embeddings
    raise RandomLTDError("cannot tell the vocabulary size of this model: pass vocab_size=")


def apply(
    model: nn.Module,
    layers: str | Sequence[int] = "middle",
    *,
    keep: int | None = None,
    special_ids: Sequence[int] = (),
    pad_id: int | None = None,
    vocab_size: int | None = None,
    init: float = 10.0,
    decay: float = 0.995,
    stack: str | None = None,
) -> TokenBypassHandle:
    """Apply TokenBypass to ``model`` in place and return its handle.

    Args:
        layers: the bypassed range: ``"middle"`` (Hou et al.'s sandwich, 1-based L/2..L-1),
            ``"second"`` (1-based L2..L-1), a slice string or a list of contiguous indices.
        keep: tokens kept per sequence in the range (``None``: no bypass until ``set_keep``).
        special_ids: ids always kept ([CLS], [SEP], [MASK], [UNK], BOS/EOS).
        pad_id: an id that is always padding (dropped first). Positions where the model's
            ``attention_mask`` is 0 are padding too; leave ``pad_id`` unset when padding reuses a
            special id such as EOS.
        vocab_size: size of the importance table (default: the input embedding's).
        init, decay: the importance's initial value and per-step decay.
    """
    if model.__dict__.get(_HANDLE_ATTR) is not None:
        raise RandomLTDError("TokenBypass is already applied to this model; random_ltd.tokenbypass.remove(model) first")
    keep = check_keep(keep)
    _, members = find_layer_stack(model, stack)
    chosen = bypass_range(layers, len(members))
    for index in chosen:
        if original_class(members[index][1]) is not type(members[index][1]):
            raise RandomLTDError(f"layer {members[index][0]} is already wrapped by random-LTD or TokenBypass")
    importance = TokenImportance(vocab_size or _vocab_size(model), init=init, decay=decay)
    control = DropControl(selection=ChosenIndices(), keep=keep)
    for index in chosen:
        wrap_layer(members[index][1], adapters.adapter_for(type(members[index][1])), index, control)
    handle = TokenBypassHandle(model, chosen, len(members), control, Selector(importance, tuple(special_ids), pad_id))
    model.__dict__[_HANDLE_ATTR] = handle
    return handle


def get_handle(model: nn.Module) -> TokenBypassHandle | None:
    return model.__dict__.get(_HANDLE_ATTR)


def remove(model: nn.Module) -> None:
    """Undo ``apply``: original layer classes, no hook left."""
    handle = model.__dict__.pop(_HANDLE_ATTR, None)
    if handle is None:
        raise RandomLTDError("TokenBypass is not applied to this model")
    handle._hook.remove()
    for module in model.modules():
        if is_wrapped(module) and layer_state(module).control is handle._control:
            unwrap_layer(module)
