"""``apply`` / ``remove`` for TokenBypass: the one ``random_ltd.apply`` with the ``TokenBypass`` strategy
over a contiguous range of layers."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from random_ltd import api
from random_ltd.api import RandomLTDHandle, find_layer_stack
from random_ltd.errors import RandomLTDError
from random_ltd.layer_selection import parse_layer_selection
from random_ltd.tokenbypass.bypass import TokenBypass
from random_ltd.tokenbypass.importance import TokenImportance

# The paper's two settings, as 0-based slices of an L-layer stack. "middle" is Hou et al.'s
# sandwich: the first half (1-based L1..L(L/2-1)) and the last layer full, 1-based L(L/2)..L(L-1)
# bypassed (L12..L23 of 24). "second": 1-based L2..L(L-1), the layers random-LTD drops in.
NAMED_RANGES = {"middle": lambda layers: (layers // 2 - 1, layers - 1), "second": lambda layers: (1, layers - 1)}
TokenBypassHandle = RandomLTDHandle  # one handle; its strategy is a TokenBypass


def bypass_range(selection: str | Sequence[int], num_layers: int) -> list[int]:
    """``"middle"``, ``"second"``, a slice string (``"3:-1"``) or indices -> contiguous indices."""
    if isinstance(selection, str) and selection in NAMED_RANGES:
        start, stop = NAMED_RANGES[selection](num_layers)
        selection = list(range(max(start, 0), stop))
    chosen = parse_layer_selection(selection, num_layers)
    if chosen != list(range(chosen[0], chosen[-1] + 1)):
        raise RandomLTDError(f"TokenBypass needs a contiguous range of layers, got {chosen}")
    return chosen


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
) -> RandomLTDHandle:
    """Apply TokenBypass to ``model`` in place and return its handle (``random_ltd.apply``'s).

    The handle reads TokenBypass's own attributes from its strategy: after each training step
    call ``handle.update(token_ids, per_token_loss)``; ``handle.importance`` is the learnt
    importance, ``handle.indices`` the kept positions of the latest training forward.

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
    if isinstance(model, nn.Module):
        api.check_unapplied(model)
    _, members = find_layer_stack(model, stack)
    chosen = bypass_range(layers, len(members))
    importance = TokenImportance(vocab_size or _vocab_size(model), init=init, decay=decay)
    strategy = TokenBypass(importance, tuple(special_ids), pad_id)
    return api.apply(model, chosen, keep=keep, strategy=strategy, stack=stack)


def get_handle(model: nn.Module) -> RandomLTDHandle | None:
    """The handle of a model under TokenBypass, else ``None``."""
    handle = api.get_handle(model)
    return handle if handle is not None and isinstance(handle.strategy, TokenBypass) else None


def remove(model: nn.Module) -> None:
    """Undo ``apply``: original layer classes, no hook left (all or nothing)."""
    if get_handle(model) is None:
        raise RandomLTDError("TokenBypass is not applied to this model")
    api.remove(model)
