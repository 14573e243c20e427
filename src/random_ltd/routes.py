"""Routes: one kept subset carried through a span of consecutive layers, gathered once, merged once.

A strategy with ``routes = True`` answers each dropping layer's ``select`` with a ``RouteStep``
(or ``None``: the layer runs on every token). The step names the forward's ``Route`` (its kept
positions, drawn once) and whether this layer starts it (its input is the full sequence: the
kept tokens are split off), ends it (its output is merged back into the sequence the route
started from: the other tokens skip every layer of the route), both (random-LTD's one-layer
drop), or neither (its input and output are the kept tokens only). Every layer of a route gets
its masks and positions gathered to the route's positions, once per route and input. The route
lives in the strategy's per-forward context, so checkpoint replays find it (``random_ltd.contexts``).
Inside a route the layers' outputs are short: hooks that record hidden states see the kept tokens.
"""
from __future__ import annotations

import dataclasses

import torch

from random_ltd import ops
from random_ltd.errors import RandomLTDError


@dataclasses.dataclass(eq=False)
class Route:
    """One route in one forward: ``indices`` ``(B, k)`` sorted, and what its first layer left for its last."""

    indices: torch.Tensor
    seq_len: int | None = None
    flat: torch.Tensor | None = None
    passthrough: torch.Tensor | None = None
    gathered: dict = dataclasses.field(default_factory=dict)  # the layers' gathered inputs, by argument name

    def start(self, tokens: torch.Tensor) -> torch.Tensor:
        """Split the route's kept tokens off the full ``(B, s, d)`` sequence."""
        self.seq_len = tokens.shape[1]
        self.flat = ops.flat_indices(self.indices, self.seq_len)
        kept, self.passthrough = ops.split_tokens(tokens, self.flat, self.indices.shape[1])
        return kept

    def check_continues(self, tokens: torch.Tensor) -> None:
        if self.passthrough is None or tokens.shape[:2] != self.indices.shape:
            raise RandomLTDError(f"a layer inside a route got hidden states of shape {tuple(tokens.shape)}, not the "
                                 f"route's {tuple(self.indices.shape)} kept tokens: routes run on consecutive layers")


@dataclasses.dataclass(frozen=True)
class RouteStep:
    """A layer's part in ``route``: it starts it (``first``), ends it (``last``), both, or neither."""

    route: Route
    first: bool
    last: bool


def check_gradient_path(tokens: torch.Tensor, step: RouteStep) -> None:
    """Refuse a multi-layer route run without autograd on inputs that need gradients.

    That is reentrant checkpointing's forward: the tokens that skip the route rejoin at its last
    layer outside the checkpointed function's inputs, so their gradient would be lost silently.
    """
    if not (step.first and step.last) and tokens.requires_grad and not torch.is_grad_enabled():
        raise RandomLTDError("a route over several layers cannot run under reentrant gradient checkpointing (the "
                             "routed-around tokens would lose their gradient); use use_reentrant=False")
