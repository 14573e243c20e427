"""The compile section counts compilations, repeats compile nothing, and limit hits are caught."""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

import random_ltd
from random_ltd.bench.compile import count_compiles, count_limit_hits


class Block(nn.Module):
    """A nanoGPT-style ``Block(x) -> x``: cheap for Dynamo to trace."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mix = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(self.norm(x)).relu()


def _count_block_compiles(kept_lengths: list[int], per_block: bool = False, dynamic_keep: bool = False,
                          layers: int = 4) -> dict:
    """``count_compiles`` over a stack of ``Block``s (all but the first and last dropping) at the given
    kept lengths; ``per_block``: each block compiled on its own instead of the stack."""
    random_ltd.register_layer(Block)
    try:
        model = nn.Sequential(*(Block(16) for _ in range(layers))).train()
        handle = random_ltd.apply(model, seed=0, dynamic_keep=dynamic_keep)
        inputs = torch.randn(2, 24, 16)

        def train_step(keep, compiled):
            handle.set_keep(keep)
            compiled(inputs).square().mean().backward()

        return count_compiles(model, train_step, kept_lengths, blocks=list(model) if per_block else None)
    finally:
        random_ltd.unregister_layer(Block)


def test_counts_compilations_and_the_repeat_of_a_kept_length_compiles_nothing():
    result = _count_block_compiles([6, 12, 18])
    assert result["distinct_kept"] == 3
    assert result["compiles"] >= result["compiles_first_length"] > 0
    assert result["compiles_on_repeat"] == 0, "a step at an already seen kept length must reuse its graphs"
    assert result["graph_breaks"] == 0  # the index draw is traced with the layer
    assert result["recompile_limit_hits"] == 0


def test_recompile_limit_warnings_are_counted():
    with count_limit_hits() as hits:
        logging.getLogger("torch._dynamo.convert_frame").warning("torch._dynamo hit config.recompile_limit (8)")
        logging.getLogger("torch._dynamo.convert_frame").warning("something else")
    assert len(hits) == 1
    logging.getLogger("torch._dynamo.convert_frame").warning("torch._dynamo hit config.recompile_limit (8)")
    assert len(hits) == 1, "the handler is removed on exit"


def test_under_fullgraph_a_recompile_limit_hit_stops_the_count_and_is_reported():
    import torch._dynamo

    limit = torch._dynamo.config.recompile_limit
    kept = list(range(2, 2 + 2 * (limit + 2), 2))  # more distinct lengths than the limit allows
    result = _count_block_compiles(kept)
    assert result["recompile_limit_hits"] >= 1
    assert result["compiled_kept"] < len(kept) == result["distinct_kept"]
    assert result["graph_breaks"] == 0


def test_per_block_compiles_are_counted_and_bounded_by_the_kept_lengths_not_the_depth():
    """12 blocks, 10 dropping: 2 graphs for the plain blocks (the first one's input needs no gradient,
    the last one's does), 1 per kept length for the dropping ones."""
    result = _count_block_compiles([6, 12, 18], per_block=True, layers=12)
    assert result["compiles"] == 2 + 3
    assert result["compiles_on_repeat"] == 0 and result["recompile_limit_hits"] == 0


def test_dynamic_keep_compiles_a_few_graphs_for_more_lengths_than_the_recompile_limit():
    import torch._dynamo

    kept = list(range(2, 2 + 2 * (torch._dynamo.config.recompile_limit + 2), 2))
    for per_block in (False, True):
        result = _count_block_compiles(kept, per_block=per_block, dynamic_keep=True, layers=6)
        assert result["compiled_kept"] == len(kept) and result["recompile_limit_hits"] == 0
        assert result["compiles"] == (3 if per_block else 1), result  # per block: 2 plain graphs (as above) + 1
