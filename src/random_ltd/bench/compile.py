"""How ``torch.compile`` copes with random-LTD: recompiles over an MSLG run, and compiled step times.

The model is compiled with ``fullgraph=True``: a graph break fails the section instead of being
counted. The kept length changes during training and each new length is a new shape, so a
compiled model recompiles; rounding the kept length to a multiple (``MSLG(..., multiple_of=m)``)
bounds the number of distinct lengths. A counting backend records every compilation (first ones
and recompiles alike). The default backend, ``eager``, runs the captured graphs as they are: it
counts what Dynamo does without spending minutes in code generation. Compiled step times put a
compiled random-LTD step beside the compiled baseline step, interleaved, on the same backend.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch

import random_ltd
from random_ltd.bench.config import BenchConfig
from random_ltd.bench.gpt import GptBench
from random_ltd.bench.timing import interleaved


def _distinct_kept(schedule, steps: int) -> list[int]:
    return [kept for _, kept in random_ltd.change_points(schedule, steps)]


def count_compiles(model: torch.nn.Module, train_step: Callable[[int, torch.nn.Module], None],
                   kept_lengths: list[int], backend: str = "eager") -> dict:
    """Two training steps per kept length (the second must not compile again), counting compilations.

    ``train_step(keep, compiled_model)`` sets the kept length and trains one step. Under
    ``fullgraph=True`` a frame past Dynamo's recompile limit fails instead of running eagerly: the
    count then stops at that kept length (``compiled_kept``: the lengths that compiled) and the hit
    is counted.
    """
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiles: list[int] = []

    def counting_backend(graph_module, example_inputs):
        compiles.append(1)
        if backend == "eager":
            return graph_module.forward
        return torch._dynamo.lookup_backend(backend)(graph_module, example_inputs)

    compiled = torch.compile(model, backend=counting_backend, fullgraph=True)
    first_length, on_repeat, compiled_kept, failed = None, 0, 0, 0
    with count_limit_hits() as limit_hits:
        for keep in kept_lengths:
            try:
                train_step(keep, compiled)
            except torch._dynamo.exc.FailOnRecompileLimitHit:
                failed = 1
                break
            before_repeat = len(compiles)
            train_step(keep, compiled)
            on_repeat += len(compiles) - before_repeat
            first_length = len(compiles) if first_length is None else first_length
            compiled_kept += 1
    result = {"distinct_kept": len(kept_lengths), "compiled_kept": compiled_kept, "compiles": len(compiles),
              "compiles_first_length": first_length, "compiles_on_repeat": on_repeat,
              "graph_breaks": sum(counters["graph_break"].values()),
              "recompile_limit_hits": max(len(limit_hits), failed)}  # a failing frame also logs its hit
    torch._dynamo.reset()
    return result


class _LimitHits(logging.Handler):
    """Dynamo's only report of a frame that stopped compiling (it then runs eagerly) is a warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "recompile_limit" in record.getMessage() or "cache_size_limit" in record.getMessage():
            self.hits.append(record.getMessage())


@contextlib.contextmanager
def count_limit_hits():
    handler = _LimitHits()
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    try:
        yield handler.hits
    finally:
        logger.removeHandler(handler)


def compiled_step_times(bench: GptBench, keep: int, backend: str, repeats: int, clock: str) -> dict:
    """Compiled baseline and compiled random-LTD training steps (kept length ``keep``), interleaved."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(bench.model, backend=backend, fullgraph=True)
    variants = {"baseline": lambda: bench.step(None, compiled), "random_ltd": lambda: bench.step(keep, compiled)}
    timings = interleaved(variants, repeats, bench.device, warmup=2, seed=0)
    torch._dynamo.reset()
    medians = {name: timing.median(clock) for name, timing in timings.items()}
    return {"keep": keep, "clock": clock, **{name: timing.to_json() for name, timing in timings.items()},
            "time_ratio_median": medians["random_ltd"] / medians["baseline"],
            "flop_ratio": bench.flops(keep) / bench.flops(None)}


def compile_section(config: BenchConfig, progress) -> dict:
    """Compilations over the whole run's kept lengths, unrounded and rounded to ``compile_multiple``,
    then compiled step times at half the sequence length."""
    gpt, run = config.gpt, config.run
    bench = GptBench(gpt, torch.device(config.device), config.torch_dtype, config.seed)
    rows = []
    for multiple in (None, config.compile_multiple):
        schedule = random_ltd.MSLG(gpt.seq_len, run.start, run.increment, full_at=run.full_at,
                                   total_steps=run.steps, multiple_of=multiple)
        progress(f"compile: kept lengths rounded to a multiple of {multiple or 1}")
        kept = _distinct_kept(schedule, run.steps)
        rows.append({"multiple_of": multiple or 1, "kept": kept,
                     **count_compiles(bench.model, bench.step, kept, config.compile_backend)})
    progress("compile: compiled step times, baseline and random-LTD")
    steps = compiled_step_times(bench, gpt.seq_len // 2, config.compile_backend, config.repeats, config.clock)
    return {"backend": config.compile_backend, "fullgraph": True, "runs": rows, "steps": steps}
