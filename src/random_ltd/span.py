"""Span routing (TREAD): one uniform subset per route and forward, carried through a span of layers.

TREAD (Krause et al., ICCV 2025, arXiv 2501.04765) keeps a fixed fraction of each sequence's
tokens, drawn uniformly at random once at a route's first layer; the same kept tokens run through
every layer up to the route's last, and the other tokens skip the whole span with their pre-route
state. ``random_ltd.apply(model, routes=[(keep, first, last), ...])`` builds ``SpanRouting``:

- ``keep``: a fraction in ``(0, 1]`` of the sequence (TREAD's form; the kept length is
  ``floor(keep * s)``, at least 1, of each forward's actual length ``s``), or an int count ``>= 2``;
- ``first``, ``last``: indices in the layer stack (negative: from the end), both inclusive;
  routes do not overlap (one may start right after another ends).

The draw is random-LTD's (``rng.uniform_keys``): keys from torch's default stream hashed with
``apply``'s seed and the route's first layer, top-``k``, sorted. The first layer draws at every
call, checkpoint replays included, so a replay consumes the default stream exactly as the forward
did (dropout after the draw sees the same numbers) and, its RNG state restored, draws the same
subset. The forward's routes live in its context (``random_ltd.contexts``), where the route's
other layers (and their replays) find them; gathering, masks and merging are ``random_ltd.routes``'.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from random_ltd import ops, rng
from random_ltd.accounting import capacity_length, capacity_problem, check_capacity
from random_ltd.errors import RandomLTDError
from random_ltd.layer_selection import check_index
from random_ltd.routes import Route, RouteStep
from random_ltd.strategies import LayerInfo, Strategy


@dataclasses.dataclass(frozen=True)
class SpanRoute:
    """One route: ``keep`` (a fraction in (0, 1] or a count) over layers ``first..last`` inclusive."""

    keep: float | int
    first: int
    last: int

    def kept_length(self, seq_len: int) -> int:
        """Tokens kept of a sequence of ``seq_len``: ``floor(keep * seq_len)`` (at least 1), or the count."""
        return capacity_length(self.keep, seq_len)

    def __contains__(self, position: int) -> bool:
        return self.first <= position <= self.last


def check_routes(routes, num_layers: int) -> tuple[SpanRoute, ...]:
    """``[(keep, first, last), ...]`` checked against a stack of ``num_layers``, indices made non-negative."""
    if isinstance(routes, (str, bytes, Mapping)) or not isinstance(routes, Sequence) or not routes:
        raise RandomLTDError(f"routes must be a non-empty list of (keep, first_layer, last_layer), got {routes!r}")
    checked = sorted((_check_route(route, num_layers) for route in routes), key=lambda route: route.first)
    for before, after in zip(checked, checked[1:], strict=False):
        if after.first <= before.last:
            raise RandomLTDError(f"routes={list(routes)!r}: the routes over layers {before.first}-{before.last} and "
                                 f"{after.first}-{after.last} overlap; a layer belongs to one route at most")
    return tuple(checked)


def _check_route(route, num_layers: int) -> SpanRoute:
    if isinstance(route, (str, bytes)) or not isinstance(route, Sequence) or len(route) != 3:
        raise RandomLTDError(f"routes: each route is (keep, first_layer, last_layer), got {route!r}")
    keep, first, last = route
    for name, index in (("first_layer", first), ("last_layer", last)):
        if isinstance(index, bool) or not isinstance(index, int):
            raise RandomLTDError(f"routes: route {route!r} has {name} {index!r}, not an integer layer index")
        if not -num_layers <= index < num_layers:
            raise RandomLTDError(f"routes: route {route!r} has {name} {index}, outside the stack of {num_layers} "
                                 f"layers (indices 0..{num_layers - 1}, or negative from the end)")
    first, last = check_index(first, num_layers), check_index(last, num_layers)
    if first > last:
        raise RandomLTDError(f"routes: route {route!r} starts at layer {first}, after its last layer {last}")
    return SpanRoute(check_keep_fraction(keep, route), first, last)


def check_route_options(layers, keep, strategy, protect_positions, protect_ids, keep_prefix_tokens) -> None:
    """``apply``'s options that mean nothing beside ``routes``, refused by name."""
    given = {
        "layers": layers != "1:-1",  # the routes name their layers
        "keep": keep is not None,  # each route has its own kept fraction
        "strategy": strategy is not None,  # routes are the strategy
        "protect_positions": bool(protect_positions),  # TREAD's subset is uniform over every token
        "protect_ids": bool(protect_ids),
        "keep_prefix_tokens": keep_prefix_tokens is not False,
    }
    clashing = [name for name, present in given.items() if present]
    if clashing:
        raise RandomLTDError(f"routes= cannot be combined with {', '.join(clashing)}: the routes name their layers and "
                             "kept fractions, and draw uniformly over every token (only seed and stack apply)")


def route_layers(routes: Sequence[SpanRoute]) -> list[int]:
    """Every layer index of the routes, in order (the layers ``apply`` wraps)."""
    return [position for route in routes for position in range(route.first, route.last + 1)]


def check_keep_fraction(keep, route=None) -> float | int:
    """A route's ``keep``: a fraction in (0, 1], or an int count of at least 2 (``accounting``'s capacity rule)."""
    problem = capacity_problem(keep)
    if problem is not None:
        where = f"routes: route {route!r} has keep {keep!r}" if route is not None else f"keep {keep!r}"
        raise RandomLTDError(f"{where}: {problem}")
    return check_capacity(keep)


def parse_routes(text: str) -> list[tuple[float | int, int, int]]:
    """``"0.5:2:5,0.7:7:10"`` -> ``[(0.5, 2, 5), (0.7, 7, 10)]`` (a command line's form of ``routes``).

    A keep with a point or ``e`` is a fraction, digits alone a count; the routes are checked
    against the model by ``apply``.
    """
    routes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        fields = part.split(":")
        try:
            if len(fields) != 3:
                raise ValueError
            keep = float(fields[0]) if any(c in fields[0].lower() for c in ".e") else int(fields[0])
            routes.append((keep, int(fields[1]), int(fields[2])))
        except ValueError:
            raise RandomLTDError(f"routes {text!r}: each route is KEEP:FIRST:LAST (e.g. 0.5:2:5), "
                                 f"got {part!r}") from None
    if not routes:
        raise RandomLTDError(f"routes {text!r} names no route (e.g. 0.5:2:5,0.7:7:10)")
    return routes


def routed_layer_tokens(routes: Sequence[SpanRoute], seq_len: int, num_layers: int) -> int:
    """Token-layers one sequence of ``seq_len`` costs through ``num_layers`` layers with these routes."""
    saved = sum((route.last - route.first + 1) * (seq_len - route.kept_length(seq_len)) for route in routes)
    return num_layers * seq_len - saved


class SpanRouting(Strategy):
    """TREAD's routes as a selection strategy (see the module doc). Built by ``apply(model, routes=...)``."""

    needs_context = True
    routes = True
    keeps_own_length = True  # each route's fraction: the handle's kept length does not apply

    def __init__(self, routes: Sequence[SpanRoute], seed: int):
        self.spans = tuple(routes)
        self.seed = seed

    def check_layers(self, wrapped: Sequence[int]) -> None:
        """Refuse a handle whose wrapped layers are not exactly the routes' (a route must start, run and end)."""
        needed = route_layers(self.spans)
        if list(wrapped) != needed:
            raise RandomLTDError(f"the routes {self.as_tuples()} run layers {needed}, not the handle's wrapped layers "
                                 f"{list(wrapped)}: apply(model, routes=...) wraps them")

    def begin_forward(self, inputs: Mapping[str, object], keep) -> dict:
        return {}  # this forward's routes, by first layer, made by the first layers as they run

    def select(self, layer: LayerInfo, tokens: torch.Tensor, keep, context: dict | None) -> RouteStep | None:
        span = next((span for span in self.spans if layer.position in span), None)
        if span is None:
            return None
        if context is None:
            raise RandomLTDError(f"layer {layer.position} ({layer.name}) routes tokens only inside a training forward "
                                 "of the model given to apply (whose forward hook starts each forward's routes)")
        if layer.position == span.first:
            context[span.first] = self._draw(span, tokens)
        elif span.first not in context:
            raise RandomLTDError(f"layer {layer.position} ({layer.name}) ran before its route's first layer "
                                 f"{span.first} in this forward: a route runs on consecutive layers, in order")
        route = context[span.first]
        if route is None:  # the route keeps every token of this forward
            return None
        return RouteStep(route, first=layer.position == span.first, last=layer.position == span.last)

    def _draw(self, span: SpanRoute, tokens: torch.Tensor) -> Route | None:
        batch, seq_len = tokens.shape[:2]
        kept = span.kept_length(seq_len)
        if kept >= seq_len:
            return None  # no draw either: the default stream moves on exactly as without routes
        keys = rng.uniform_keys(self.seed, span.first, batch, seq_len, tokens.device)
        return Route(ops.keep_top(keys, kept))

    def as_tuples(self) -> list[tuple]:
        """The routes as ``apply`` takes them, ``[(keep, first, last), ...]`` (indices non-negative)."""
        return [dataclasses.astuple(span) for span in self.spans]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "routes": self.as_tuples()}

    def load_state_dict(self, state: dict) -> None:
        seed = state["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RandomLTDError(f"seed must be an integer, got {seed!r}")
        saved = [tuple(span) for span in state.get("routes", ())]
        if saved and saved != self.as_tuples():
            raise RandomLTDError(f"the saved routes {saved} differ from this model's {self.as_tuples()}: "
                                 "apply the same routes")
        self.seed = seed

    def __repr__(self) -> str:
        spans = ", ".join(f"({span.keep}, {span.first}, {span.last})" for span in self.spans)
        return f"SpanRouting([{spans}], seed={self.seed})"
