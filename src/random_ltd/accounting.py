"""Layer-token and FLOP accounting: per step, accumulated, and in closed form over a schedule.

LayerTokens (paper Section 4): the sum over steps and layers of the tokens each layer processed.
A dropping layer processes the kept length, every other layer the full length.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from random_ltd.errors import ConfigError
from random_ltd.schedules import KeptLengthSchedule, change_points, check_int

DropLayers = int | Sequence[int]


def count_drop_layers(num_layers: int, drop_layers: DropLayers) -> int:
    """How many layers drop: ``drop_layers`` is a count or a list of distinct indices."""
    num_layers = check_int("num_layers", num_layers)
    if isinstance(drop_layers, int) and not isinstance(drop_layers, bool):
        if not 0 <= drop_layers <= num_layers:
            raise ConfigError("drop_layers", f"{drop_layers} is not a count between 0 and num_layers={num_layers}")
        return drop_layers
    indices = [check_int("drop_layers", i, minimum=-num_layers) for i in drop_layers]
    normalised = {i % num_layers for i in indices}
    if len(normalised) != len(indices) or max(indices, default=0) >= num_layers:
        raise ConfigError("drop_layers", f"{list(drop_layers)} must be distinct indices of {num_layers} layers")
    return len(indices)


def _kept(seq_len: int, kept: int | None) -> int:
    return seq_len if kept is None else min(check_int("kept", kept), seq_len)


def layer_tokens_per_step(seq_len: int, batch_size: int, num_layers: int, drop_layers: DropLayers,
                          kept: int | None) -> int:
    """Layer-tokens of one step: ``batch * (dropping * kept + (num_layers - dropping) * seq_len)``.

    ``kept=None`` (or ``kept >= seq_len``) means nothing is dropped.
    """
    seq_len = check_int("seq_len", seq_len)
    batch_size = check_int("batch_size", batch_size)
    dropping = count_drop_layers(num_layers, drop_layers)
    return batch_size * (dropping * _kept(seq_len, kept) + (num_layers - dropping) * seq_len)


def routed_tokens_per_step(seq_len: int, batch_size: int, moe_layers: int, drop_layers: DropLayers,
                           kept: int | None, top_k: int = 1) -> int:
    """Token-to-expert assignments of one step in a stack of ``moe_layers`` mixture-of-experts layers.

    Each layer's router sends every token it sees to ``top_k`` experts: a dropping layer routes
    ``batch * kept`` tokens, the others ``batch * seq_len``, so the experts' work shrinks with
    the layer-tokens (``top_k=1`` counts routed tokens, as ``RouterLoss.routed_tokens`` does).
    """
    return check_int("top_k", top_k) * layer_tokens_per_step(seq_len, batch_size, moe_layers, drop_layers, kept)


def kept_segments(schedule: KeptLengthSchedule, total_steps: int) -> list[tuple[int, int, int]]:
    """``[(first_step, kept, number_of_steps), ...]`` covering steps 0 .. total_steps - 1."""
    points = change_points(schedule, total_steps)
    ends = [step for step, _ in points[1:]] + [total_steps]
    return [(step, kept, end - step) for (step, kept), end in zip(points, ends, strict=True)]


def total_layer_tokens(schedule: KeptLengthSchedule, total_steps: int, *, batch_size: int, num_layers: int,
                       drop_layers: DropLayers) -> int:
    """Layer-tokens over steps 0 .. total_steps - 1, summed in closed form per constant-length segment.

    The baseline (nothing dropped) is ``total_steps * batch_size * seq_len * num_layers``, which
    is what this returns for ``drop_layers=0`` or a schedule that is always at full length.
    """
    return sum(count * layer_tokens_per_step(schedule.seq_len, batch_size, num_layers, drop_layers, kept)
               for _, kept, count in kept_segments(schedule, total_steps))


def layer_flops(tokens: int, d_model: int, ffn_dim: int) -> int:
    """Forward FLOPs of one transformer layer on one sequence of ``tokens`` tokens.

    ``8 t d^2`` (Q, K, V and output projections) + ``4 t^2 d`` (scores Q K^T and the weighted sum
    of V) + ``4 t d f`` (the two feed-forward matrices); 2 FLOPs per multiply-add.
    """
    return 8 * tokens * d_model**2 + 4 * tokens**2 * d_model + 4 * tokens * d_model * ffn_dim


def flops_per_step(seq_len: int, batch_size: int, num_layers: int, d_model: int, *, kept: int | None = None,
                   drop_layers: DropLayers = 0, ffn_dim: int | None = None, vocab_size: int = 0,
                   backward: bool = True) -> int:
    """Estimated FLOPs of one training step of a decoder/encoder stack (matrix multiplications only).

    Per sequence: each layer costs ``layer_flops(t, d, f)`` with t = ``kept`` in a dropping layer
    and t = ``seq_len`` elsewhere, plus ``2 s d V`` for the output projection onto a vocabulary of
    ``vocab_size`` (0: left out, e.g. for a classifier). ``backward=True`` multiplies by 3 (the
    backward pass costs twice the forward). This is the formula of Narayanan et al. (2021) without
    activation recomputation; attention is counted in full even when causal. Softmax, norms,
    embeddings and random-LTD's gather/scatter (memory-bound) are left out. ``ffn_dim`` defaults
    to ``4 * d_model``.
    """
    seq_len, batch_size = check_int("seq_len", seq_len), check_int("batch_size", batch_size)
    d_model = check_int("d_model", d_model)
    ffn_dim = 4 * d_model if ffn_dim is None else check_int("ffn_dim", ffn_dim)
    vocab_size = check_int("vocab_size", vocab_size, minimum=0)
    dropping = count_drop_layers(num_layers, drop_layers)
    per_sequence = (dropping * layer_flops(_kept(seq_len, kept), d_model, ffn_dim)
                    + (num_layers - dropping) * layer_flops(seq_len, d_model, ffn_dim)
                    + 2 * seq_len * d_model * vocab_size)
    return (3 if backward else 1) * batch_size * per_sequence


def total_flops(schedule: KeptLengthSchedule, total_steps: int, *, batch_size: int, num_layers: int,
                drop_layers: DropLayers, d_model: int, ffn_dim: int | None = None, vocab_size: int = 0) -> int:
    """Training FLOPs over steps 0 .. total_steps - 1 (closed form per constant-length segment)."""
    return sum(count * flops_per_step(schedule.seq_len, batch_size, num_layers, d_model, kept=kept,
                                      drop_layers=drop_layers, ffn_dim=ffn_dim, vocab_size=vocab_size)
               for _, kept, count in kept_segments(schedule, total_steps))


_EPSILON = 1e-9  # 0.29 * 100 is 28.999999999999996 in floating point: floor it to 29, not 28


def capacity_problem(capacity) -> str | None:
    """Why ``capacity`` is not a kept fraction in (0, 1] or an int token count >= 2 (``None``: it is one).

    The one rule for Mixture-of-Depths' capacity and a span route's keep: each caller raises its own
    error around the reason (``check_capacity`` a ``ConfigError``, ``span`` a route's message)."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)):
        return "must be a fraction in (0, 1] or an int token count"
    if isinstance(capacity, int):
        if capacity == 1:
            return "an int 1 would keep one token; write 1.0 to keep every token"
        return "a kept token count must be at least 2" if capacity < 1 else None
    return None if 0.0 < capacity <= 1.0 else "a kept fraction must lie in (0, 1]"  # NaN fails the comparison


def check_capacity(capacity, field: str = "mod_capacity") -> float | int:
    """``capacity`` checked by ``capacity_problem`` (a ``ConfigError`` naming ``field``): an int count or a float."""
    problem = capacity_problem(capacity)
    if problem is not None:
        raise ConfigError(field, f"{problem}, got {capacity!r}")
    return capacity if isinstance(capacity, int) else float(capacity)


def capacity_length(capacity: float | int, seq_len: int) -> int:
    """Mixture-of-Depths: tokens a routed layer runs on of ``seq_len``: ``floor(capacity * s)`` (at least 1),
    or the int count."""
    if isinstance(capacity, int):
        return min(capacity, seq_len)
    return min(seq_len, max(1, math.floor(capacity * seq_len + _EPSILON)))


def mod_layer_tokens_per_step(seq_len: int, batch_size: int, num_layers: int, routed_layers: DropLayers,
                              capacity: float | int) -> int:
    """Layer-tokens of one Mixture-of-Depths training step: routed layers run ``capacity_length`` tokens."""
    capacity = check_capacity(capacity)
    return layer_tokens_per_step(seq_len, batch_size, num_layers, routed_layers, capacity_length(capacity, seq_len))


def mod_flops_per_step(seq_len: int, batch_size: int, num_layers: int, d_model: int, *, routed_layers: DropLayers,
                       capacity: float | int, ffn_dim: int | None = None, vocab_size: int = 0,
                       backward: bool = True) -> int:
    """``flops_per_step`` of a Mixture-of-Depths step: routed layers run ``capacity_length`` tokens and each
    adds its router, ``2 s d`` (a ``d -> 1`` map over every token); top-k, the weighting and the
    router-prediction loss are elementwise and left out, as norms are."""
    capacity = check_capacity(capacity)
    flops = flops_per_step(seq_len, batch_size, num_layers, d_model, kept=capacity_length(capacity, seq_len),
                           drop_layers=routed_layers, ffn_dim=ffn_dim, vocab_size=vocab_size, backward=backward)
    routers = count_drop_layers(num_layers, routed_layers) * 2 * seq_len * d_model
    return flops + (3 if backward else 1) * batch_size * routers
