"""What one index draw costs: the hashed draw against a seeded ``torch.rand``, and one draw per
forward pass (all dropping layers at once) against one per layer. Prints medians in ms.

The hashed draw is timed twice: as ``rng.uniform_keys`` computes it (the per-position table
hashed anew every call) and as a dropping layer draws it (``UniformSelection`` with the layer's
stream word, the table made once per length and device).

    python examples/draw_cost.py [--repeats 60]
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from random_ltd import ops, rng
from random_ltd.strategies import LayerInfo, UniformSelection

CPU = torch.device("cpu")


def median_ms(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def seeded_rand(batch: int, seq_len: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    generator.manual_seed(7)
    return ops.keep_top(torch.rand(batch, seq_len, generator=generator), keep)


def per_layer(layers: int, batch: int, seq_len: int, keep: int) -> list[torch.Tensor]:
    return [ops.keep_top(rng.uniform_keys(1, layer, batch, seq_len, CPU), keep) for layer in range(layers)]


def as_a_layer(selection: UniformSelection, stream: torch.Tensor, tokens: torch.Tensor, keep: int) -> torch.Tensor:
    return selection.select(LayerInfo(position=0, stream=stream), tokens, keep, None)


def one_call(layers: int, batch: int, seq_len: int, keep: int) -> tuple[torch.Tensor, ...]:
    return ops.keep_top(rng.uniform_keys(1, 0, layers * batch, seq_len, CPU), keep).split(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    repeats = parser.parse_args().repeats
    torch.set_num_threads(1)
    generator = torch.Generator()
    for batch, seq_len in ((8, 128), (8, 1024), (4, 2048)):
        keep = seq_len // 2
        rand = median_ms(functools.partial(seeded_rand, batch, seq_len, keep, generator), repeats)
        hashed = median_ms(functools.partial(per_layer, 1, batch, seq_len, keep), repeats)
        selection = UniformSelection(seed=1)
        tokens = torch.empty(batch, seq_len, 0)
        layer = median_ms(functools.partial(as_a_layer, selection, selection.stream(0), tokens, keep), repeats)
        print(f"one layer, {batch}x{seq_len}: seeded torch.rand {rand:.3f} ms, hashed draw {hashed:.3f} ms "
              f"(table rebuilt), {layer:.3f} ms (as a layer draws: table cached)")
    for layers, batch, seq_len in ((10, 16, 128), (10, 8, 1024), (22, 2, 2048)):
        keep = seq_len // 2
        each = median_ms(functools.partial(per_layer, layers, batch, seq_len, keep), repeats)
        once = median_ms(functools.partial(one_call, layers, batch, seq_len, keep), repeats)
        print(f"{layers} layers, {batch}x{seq_len}: one draw per layer {each:.2f} ms, one per forward {once:.2f} ms")


if __name__ == "__main__":
    main()
