"""Which layers of a stack: ``"1:-1"``, ``"::2"``, ``"3"`` or a list of indices, parsed without
touching a model (the planner and the training program use it before any model exists)."""
from __future__ import annotations

from collections.abc import Sequence

from random_ltd.errors import RandomLTDError

LayerSelection = str | Sequence[int]


def parse_layer_selection(selection: LayerSelection, num_layers: int) -> list[int]:
    """``"1:-1"``, ``"::2"``, ``"3"`` or a list of indices (negative allowed) -> sorted indices.

    Slice bounds must lie in ``-num_layers..num_layers``: Python would clip ``"3:40"`` silently.
    """
    if isinstance(selection, str):
        chosen = _parse_text(selection, num_layers)
    else:
        chosen = [check_index(i, num_layers) for i in _integers(selection)]
    chosen = sorted(set(chosen))
    if not chosen:
        raise RandomLTDError(f"layers={selection!r} selects no layer of a stack of {num_layers}")
    return chosen


def _integers(selection: Sequence[int]) -> list[int]:
    values = list(selection)
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in values):
        raise RandomLTDError(f"layers={selection!r} must hold integers (layer indices), a slice string or a list")
    return values


def _parse_text(selection: str, num_layers: int) -> list[int]:
    text = selection.strip()
    try:
        if ":" in text:
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            _check_slice(selection, parts, num_layers)
            return list(range(num_layers))[slice(*parts)]
        return [check_index(int(p), num_layers) for p in text.split(",") if p.strip()]
    except ValueError as error:
        if isinstance(error, RandomLTDError):
            raise
        raise RandomLTDError(
            f"layers={selection!r} is not a slice like '1:-1' or '::2', nor a comma-separated list of indices"
        ) from None


def _check_slice(selection: str, parts: list[int | None], num_layers: int) -> None:
    for bound in parts[:2]:
        if bound is not None and not -num_layers <= bound <= num_layers:
            raise RandomLTDError(f"layers={selection!r}: slice bound {bound} is outside a stack of "
                                 f"{num_layers} layers (bounds from {-num_layers} to {num_layers})")
    if len(parts) == 3 and parts[2] == 0:
        raise RandomLTDError(f"layers={selection!r}: slice step cannot be zero")


def check_index(index: int, num_layers: int) -> int:
    """``index`` (negative counts from the end) as an index in ``[0, num_layers)``."""
    if not -num_layers <= index < num_layers:
        raise RandomLTDError(f"layer index {index} is out of range for a stack of {num_layers} layers")
    return index % num_layers
