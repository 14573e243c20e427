"""How ``torch.compile`` copes with random-LTD: recompiles over an MSLG run, and compiled step times.

The model is compiled whole, or block by block (each transformer block ``.compile``d, as
torchtitan does), always with ``fullgraph=True``: a graph break fails the section instead of
being counted. The kept length changes during training; with a static kept length each new
length is a new shape and compiles again, bounded by rounding (``MSLG(..., multiple_of=m)``);
with ``dynamic_keep`` the kept length is traced as a symbol and one graph serves every length.
A counting backend records every compilation (first ones and recompiles alike). The default
backend, ``eager``, runs the captured graphs as they are: it counts what Dynamo does without
spending minutes in code generation. Compiled step times put compiled random-LTD steps (static
and dynamic kept length) beside the compiled baseline step, interleaved, on the same backend.
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
                   kept_lengths: list[int], backend: str = "eager",
                   blocks: list[torch.nn.Module] | None = None) -> dict:
    """Two training steps per kept length (the second must not compile again), counting compilations.

    ``train_step(keep, compiled_model)`` sets the kept length and trains one step. ``blocks``:
    compile these modules in place, each on its own, instead of the whole model. Under
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

    compiled = _compile(model, blocks, counting_backend)
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


def _compile(model: torch.nn.Module, blocks: list[torch.nn.Module] | None, backend) -> torch.nn.Module:
    """The model to call: compiled whole, or itself with each of ``blocks`` compiled in place."""
    if blocks is None:
        return torch.compile(model, backend=backend, fullgraph=True)
    for block in blocks:
        block.compile(backend=backend, fullgraph=True)
    return model


def _blocks(bench: GptBench) -> list[torch.nn.Module]:
    """The GPT-2 blocks: what a per-block ``torch.compile`` (torchtitan's way) compiles one by one."""
    return list(bench.model.transformer.h)


def compiled_step_times(bench: GptBench, keep: int, backend: str, repeats: int, clock: str,
                        per_block: bool = False) -> dict:
    """Compiled baseline and compiled random-LTD training steps (kept length ``keep``, static and
    dynamic), interleaved; ``per_block``: the blocks are compiled one by one instead of the model."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled = _compile(bench.model, _blocks(bench) if per_block else None, backend)

    def ltd(dynamic: bool):
        bench.handle.dynamic_keep = dynamic
        bench.step(keep, compiled)

    variants = {"baseline": lambda: bench.step(None, compiled), "random_ltd": lambda: ltd(False),
                "random_ltd_dynamic": lambda: ltd(True)}
    timings = interleaved(variants, repeats, bench.device, warmup=2, seed=0)
    bench.handle.dynamic_keep = False
    torch._dynamo.reset()
    medians = {name: timing.median(clock) for name, timing in timings.items()}
    return {"keep": keep, "clock": clock, "per_block": per_block,
            **{name: timing.to_json() for name, timing in timings.items()},
            "time_ratio_median": medians["random_ltd"] / medians["baseline"],
            "dynamic_time_ratio_median": medians["random_ltd_dynamic"] / medians["baseline"],
            "flop_ratio": bench.flops(keep) / bench.flops(None)}


# (compiled as, kept lengths rounded to compile_multiple, dynamic kept length)
COMPILE_RUNS = (("model", False, False), ("model", True, False), ("model", False, True),
                ("blocks", True, False), ("blocks", False, True))


def compile_section(config: BenchConfig, progress) -> dict:
    """Compilations over the whole run's kept lengths (model or blocks compiled; unrounded, rounded
    to ``compile_multiple`` or dynamic), then compiled step times at half the sequence length."""
    gpt, run = config.gpt, config.run
    rows = []
    for compiled_as, rounded, dynamic in COMPILE_RUNS:
        multiple = config.compile_multiple if rounded else None
        schedule = random_ltd.MSLG(gpt.seq_len, run.start, run.increment, full_at=run.full_at,
                                   total_steps=run.steps, multiple_of=multiple)
        progress(f"compile: {compiled_as} compiled, kept lengths rounded to a multiple of {multiple or 1}"
                 f"{', dynamic' if dynamic else ''}")
        kept = _distinct_kept(schedule, run.steps)
        bench = GptBench(gpt, torch.device(config.device), config.torch_dtype, config.seed)
        bench.handle.dynamic_keep = dynamic
        blocks = _blocks(bench) if compiled_as == "blocks" else None
        rows.append({"compiled": compiled_as, "multiple_of": multiple or 1, "dynamic_keep": dynamic, "kept": kept,
                     **count_compiles(bench.model, bench.step, kept, config.compile_backend, blocks)})
    steps = []
    for per_block in (False, True):
        progress(f"compile: compiled step times ({'blocks' if per_block else 'model'}), baseline and random-LTD")
        bench = GptBench(gpt, torch.device(config.device), config.torch_dtype, config.seed)
        steps.append(compiled_step_times(bench, gpt.seq_len // 2, config.compile_backend, config.repeats,
                                         config.clock, per_block))
    return {"backend": config.compile_backend, "fullgraph": True, "runs": rows, "steps": steps}
