"""``random-ltd bench``: does the compute random-LTD saves show up on the clock?

``run_bench(config)`` measures, in one process (memory: one subprocess per variant):

- ``stack``: forward+backward of a stack of GPT-2 blocks at full length (a), with random-LTD
  at kept length k (b), and the ideal (c), interleaved and repeated; overhead = (b - c) / a,
  realised fraction = (a - b) / (a - c);
- ``train``: a training step of the ``gpt`` task's model at several kept lengths vs the baseline;
- ``memory``: peak memory of one step of (a), (b), (c);
- ``run``: a whole MSLG run vs the baseline run: realised wall-clock saving against the
  theoretical layer-token and FLOP saving;
- ``compile``: ``torch.compile`` compilations and graph breaks over the run's kept lengths,
  unrounded and rounded to a multiple.

The JSON keys are documented in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import datetime
import sys
from collections.abc import Callable

import torch

from random_ltd.bench import compile as compile_bench
from random_ltd.bench import report, sections
from random_ltd.bench.config import SECTIONS, BenchConfig, GptShape, RunShape, StackShape, default_config, quick_config

SCHEMA_VERSION = 1

__all__ = ["BenchConfig", "GptShape", "RunShape", "StackShape", "default_config", "quick_config", "run_bench"]


def _stderr(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_bench(config: BenchConfig, progress: Callable[[str], None] = _stderr,
              on_section: Callable[[dict], None] | None = None) -> dict:
    """Run the configured sections; torch's thread count is restored afterwards.

    ``on_section(result)`` is called after each finished section with the result so far
    (``"complete": False`` until the last), so that an interrupted run keeps what it measured.
    """
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run_sections(config, progress, on_section or (lambda result: None))
    finally:
        torch.set_num_threads(threads_before)


def _run_sections(config: BenchConfig, progress: Callable[[str], None], on_section: Callable[[dict], None]) -> dict:
    device = torch.device(config.device)
    result: dict = {
        "schema": SCHEMA_VERSION,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": report.machine(device),
        "conditions": {"start": report.conditions()},
        "settings": {"repeats": config.repeats, "warmup": config.warmup, "dtype": config.dtype,
                     "device": config.device, "clock": config.clock, "seed": config.seed, "quick": config.quick,
                     "sections": list(config.sections), "keep_fractions": list(config.keep_fractions)},
        "complete": False,
    }
    measurements = {
        "stack": ("stack", lambda: [sections.stack_section(shape, config, progress) for shape in config.stack_shapes]),
        "train": ("train_step", lambda: sections.train_section(config, progress)),
        "memory": ("memory", lambda: [sections.memory_section(shape, config, progress)
                                      for shape in config.stack_shapes]),
        "run": ("whole_run", lambda: sections.whole_run_section(config, progress)),
        "compile": ("compile", lambda: compile_bench.compile_section(config, progress)),
    }
    for section in SECTIONS:  # in this order whatever the order asked for
        if section in config.sections:
            key, measure = measurements[section]
            result[key] = measure()
            result["targets"] = report.targets(result)
            on_section(result)
    result["conditions"]["end"] = report.conditions()
    result["complete"] = True
    return result
