"""Interleaved timing: every variant runs warm-up + repeats times, in a shuffled order per round."""
from __future__ import annotations

import statistics

import torch

from random_ltd.bench.timing import Timing, interleaved


def test_every_variant_runs_warmup_plus_repeats_times_and_orders_vary():
    calls: list[str] = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    timings = interleaved(variants, repeats=6, device=torch.device("cpu"), warmup=2, seed=3)
    assert sorted(timings) == list("abcd")
    assert all(len(timing.wall) == len(timing.cpu) == 6 for timing in timings.values())
    assert calls[:8] == list("abcd") * 2  # warm-up in declaration order
    rounds = [tuple(calls[8 + 4 * r: 12 + 4 * r]) for r in range(6)]
    assert all(sorted(order) == list("abcd") for order in rounds)
    assert len(set(rounds)) > 1, "the order should be reshuffled between rounds"


def test_the_seed_sets_the_order():
    def orders(seed):
        calls: list[str] = []
        interleaved({n: (lambda n=n: calls.append(n)) for n in "xyz"}, 4, torch.device("cpu"), warmup=0, seed=seed)
        return calls
    assert orders(1) == orders(1)
    assert orders(1) != orders(2)  # not a fixed order, nor a stream that ignores the seed


def test_timing_statistics_per_clock():
    timing = Timing(wall=[0.5, 0.2, 0.9, 0.4], cpu=[0.3, 0.6, 0.1, 0.2])
    assert timing.min("wall") == 0.2 and timing.min("cpu") == 0.1
    assert timing.median("wall") == statistics.median([0.5, 0.2, 0.9, 0.4])
    assert timing.median("cpu") == statistics.median([0.3, 0.6, 0.1, 0.2])
    assert timing.to_json() == {
        "min_s": 0.2, "median_s": timing.median("wall"), "times_s": [0.5, 0.2, 0.9, 0.4],
        "cpu_min_s": 0.1, "cpu_median_s": timing.median("cpu"), "cpu_times_s": [0.3, 0.6, 0.1, 0.2]}


def test_wall_clock_counts_waiting_and_cpu_clock_counts_work():
    import time

    def spin(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    timings = interleaved({"sleep": lambda: time.sleep(0.05), "spin": lambda: spin(0.05)}, 2,
                          torch.device("cpu"), warmup=0)
    assert timings["sleep"].min("wall") >= 0.05 and timings["sleep"].min("cpu") < 0.02
    # A spin's wall time is its CPU time, measured by another clock: the two disagree by up to a tick
    # (seen: 0.049998 s of wall for 0.050037 s of CPU), so wall is held to the spin less a millisecond.
    assert timings["spin"].min("cpu") >= 0.05 and timings["spin"].min("wall") >= 0.049
