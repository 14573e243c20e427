"""Interleaved, repeated timing: noisy machines need both.

Each round runs every variant once, in a freshly shuffled order, so slow drifts of the machine
(another process, frequency changes) spread over all variants instead of biasing the one that
happened to run during them. The minimum estimates the undisturbed time; the median shows the
typical one.

Two clocks are recorded for every call: wall-clock (``time.perf_counter``) and the process's
CPU time (``time.process_time``). On a machine shared with other jobs, one thread's CPU time
is what its wall-clock would be undisturbed; derived figures use the clock chosen in the config.
"""
from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable

import torch

CLOCKS = ("wall", "cpu")


@dataclasses.dataclass
class Timing:
    """Seconds per call of one variant, one entry per round, on both clocks."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)

    def times(self, clock: str) -> list[float]:
        return self.wall if clock == "wall" else self.cpu

    def min(self, clock: str) -> float:
        return min(self.times(clock))

    def median(self, clock: str) -> float:
        return statistics.median(self.times(clock))

    def to_json(self) -> dict:
        return {"min_s": self.min("wall"), "median_s": self.median("wall"), "times_s": list(self.wall),
                "cpu_min_s": self.min("cpu"), "cpu_median_s": self.median("cpu"), "cpu_times_s": list(self.cpu)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(call: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one call, the device synchronised around it."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    *,
    warmup: int = 1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Time every variant ``repeats`` times after ``warmup`` untimed calls each."""
    order = list(variants)
    for _ in range(warmup):
        for name in order:
            variants[name]()
    shuffler = random.Random(seed)
    timings = {name: Timing() for name in order}
    for round_index in range(repeats):
        shuffler.shuffle(order)
        for name in order:
            wall, cpu = time_call(variants[name], device)
            timings[name].wall.append(wall)
            timings[name].cpu.append(cpu)
        if progress is not None:
            progress(f"round {round_index + 1}/{repeats}")
    return timings
