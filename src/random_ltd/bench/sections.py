"""The four measurements of ``random-ltd bench``; each returns a JSON-ready dict."""
from __future__ import annotations

import dataclasses
import random
import statistics
from collections.abc import Callable

import torch

import random_ltd
from random_ltd.bench.config import BenchConfig, StackShape
from random_ltd.bench.gpt import GptBench
from random_ltd.bench.memory import measure_in_subprocess
from random_ltd.bench.stack import StackBench
from random_ltd.bench.timing import Timing, interleaved, time_call

Progress = Callable[[str], None]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def keep_figures(full: Timing, ltd: Timing, ideal: Timing, clock: str) -> dict:
    """Overhead (b - c) / a and realised fraction (a - b) / (a - c) of one kept length, from the
    minima and from the per-round ratios (medians)."""
    a, b, c = full.times(clock), ltd.times(clock), ideal.times(clock)
    per_round = [(b_r - c_r) / a_r for a_r, b_r, c_r in zip(a, b, c, strict=True)]
    return {
        "ltd": ltd.to_json(),
        "ideal": ideal.to_json(),
        "overhead": (min(b) - min(c)) / min(a),
        "overhead_median": statistics.median(per_round),
        "realised_fraction": _ratio(min(a) - min(b), min(a) - min(c)),
        "realised_fraction_median": _ratio(full.median(clock) - ltd.median(clock),
                                           full.median(clock) - ideal.median(clock)),
    }


def stack_section(shape: StackShape, config: BenchConfig, progress: Progress) -> dict:
    """(a) full, (b) random-LTD and (c) ideal forward+backward of one layer stack, interleaved."""
    device = torch.device(config.device)
    bench = StackBench(shape, device, config.torch_dtype, config.seed)
    keeps = shape.keeps(config.keep_fractions)
    timings = interleaved(bench.variants(keeps), config.repeats, device, warmup=config.warmup, seed=config.seed,
                          progress=lambda message: progress(f"stack {shape.name}: {message}"))
    full = timings["full"]
    rows = [{"keep": keep, **keep_figures(full, timings[f"ltd@{keep}"], timings[f"ideal@{keep}"], config.clock)}
            for keep in keeps]
    return {"shape": dataclasses.asdict(shape), "drop_layers": bench.handle.drop_layers, "full": full.to_json(),
            "keeps": rows}


def train_section(config: BenchConfig, progress: Progress) -> dict:
    """One training step of the ``gpt`` model at several kept lengths against the baseline and the ideal."""
    device = torch.device(config.device)
    bench = GptBench(config.gpt, device, config.torch_dtype, config.seed)
    keeps = StackShape("gpt", config.gpt.hidden, config.gpt.heads, config.gpt.layers, config.gpt.seq_len,
                       config.gpt.batch).keeps(config.keep_fractions)
    timings = interleaved(bench.variants(keeps), config.repeats, device, warmup=config.warmup, seed=config.seed,
                          progress=lambda message: progress(f"train step: {message}"))
    baseline = timings["baseline"]
    rows = [_train_row(bench, keep, baseline, timings[f"ltd@{keep}"], timings[f"ideal@{keep}"], config.clock)
            for keep in keeps]
    return {"model": dataclasses.asdict(config.gpt), "drop_layers": bench.handle.drop_layers,
            "baseline": baseline.to_json(), "keeps": rows}


def _train_row(bench: GptBench, keep: int, baseline: Timing, ltd: Timing, ideal: Timing, clock: str) -> dict:
    flop_saving = 1 - bench.flops(keep) / bench.flops(None)
    saving = 1 - ltd.min(clock) / baseline.min(clock)
    return {"keep": keep, "time": ltd.to_json(), "ideal": ideal.to_json(), "saving": saving,
            "saving_median": 1 - ltd.median(clock) / baseline.median(clock),
            "ideal_saving": 1 - ideal.min(clock) / baseline.min(clock), "flop_saving": flop_saving,
            "layer_token_saving": 1 - bench.layer_tokens(keep) / bench.layer_tokens(None),
            "saving_over_flop_saving": _ratio(saving, flop_saving)}


def memory_section(shape: StackShape, config: BenchConfig, progress: Progress) -> dict:
    """Peak memory of one step of (a), (b), (c), each in a fresh subprocess."""
    def measure(variant: str, keep: int | None) -> dict:
        progress(f"memory {shape.name}: {variant}" + (f"@{keep}" if keep else ""))
        return measure_in_subprocess(shape, variant, keep, config.device, config.dtype, config.seed, config.threads)

    full = measure("full", None)
    rows = []
    for keep in shape.keeps(config.memory_fractions):
        ltd, ideal = measure("ltd", keep), measure("ideal", keep)
        rows.append({"keep": keep, "ltd": ltd, "ideal": ideal,
                     "ltd_over_full": _ratio(ltd["step_peak_bytes"], full["step_peak_bytes"]),
                     "ltd_over_ideal": _ratio(ltd["step_peak_bytes"], ideal["step_peak_bytes"])})
    return {"shape": dataclasses.asdict(shape), "method": full["method"], "full": full, "keeps": rows}


def whole_run_section(config: BenchConfig, progress: Progress) -> dict:
    """A whole MSLG run against the baseline run and the ideal run, step by step interleaved
    (random order per step). The ideal arm runs ``ideal_lm_loss``: the saving with free machinery."""
    gpt, run = config.gpt, config.run
    device = torch.device(config.device)
    bench = GptBench(gpt, device, config.torch_dtype, config.seed)
    schedule = random_ltd.MSLG(gpt.seq_len, run.start, run.increment, full_at=run.full_at, total_steps=run.steps)
    for _ in range(config.warmup):
        bench.baseline()
        bench.random_ltd(schedule(0))
    totals = {"baseline": Timing(), "random_ltd": Timing(), "ideal": Timing()}
    shuffler = random.Random(config.seed)
    for step in range(run.steps):
        keep = schedule(step)
        arms = [("baseline", bench.baseline), ("random_ltd", lambda keep=keep: bench.random_ltd(keep)),
                ("ideal", lambda keep=keep: bench.ideal(keep))]
        shuffler.shuffle(arms)
        for name, call in arms:
            wall, cpu = time_call(call, device)
            totals[name].wall.append(wall)
            totals[name].cpu.append(cpu)
        if (step + 1) % max(1, run.steps // 10) == 0:
            progress(f"whole run: step {step + 1}/{run.steps}")
    return _whole_run_summary(bench, schedule, totals, config.clock)


def paired_saving(times: list[float], baseline_times: list[float], step_kept: list[int | None]) -> float:
    """The run's saving from per-step ratios: 1 - mean over steps of (arm's time / baseline's time),
    each step's ratio replaced by the median ratio of the steps that share its kept length.

    Every baseline step does the same work, so the run's saving is the mean of the per-step
    savings. The two arms of a step run seconds apart, so the ratio cancels the slow drifts of a
    shared machine (its speed moves by 10-20 % over minutes); the median within a kept length's
    steps removes the spikes (another job taking the core during one step).
    """
    if not len(times) == len(baseline_times) == len(step_kept) > 0:
        raise ValueError(f"need as many times ({len(times)}) as baseline times ({len(baseline_times)}) "
                         f"and kept lengths ({len(step_kept)}), at least one")
    ratios: dict[int | None, list[float]] = {}
    for seconds, baseline, kept in zip(times, baseline_times, step_kept, strict=True):
        ratios.setdefault(kept, []).append(seconds / baseline)
    return 1 - sum(len(group) * statistics.median(group) for group in ratios.values()) / len(step_kept)


def _whole_run_summary(bench: GptBench, schedule, steps_timing: dict, clock: str) -> dict:
    gpt, steps = bench.shape, schedule.total_steps
    step_kept = [schedule(step) for step in range(steps)]
    totals = {name: sum(timing.times(clock)) for name, timing in steps_timing.items()}
    paired = {name: paired_saving(timing.times(clock), steps_timing["baseline"].times(clock), step_kept)
              for name, timing in steps_timing.items()}
    sizes = dict(batch_size=gpt.batch, num_layers=gpt.layers, drop_layers=bench.handle.drop_layers)
    layer_tokens = random_ltd.total_layer_tokens(schedule, steps, **sizes)
    baseline_layer_tokens = steps * gpt.batch * gpt.layers * gpt.seq_len
    flops = random_ltd.total_flops(schedule, steps, d_model=gpt.hidden, vocab_size=gpt.vocab, **sizes)
    baseline_step_flops = bench.flops(None)
    flop_saving = 1 - flops / (steps * baseline_step_flops)

    def saving(times: dict, arm: str) -> float:
        return 1 - times[arm] / times["baseline"]

    return {
        "model": dataclasses.asdict(gpt),
        "schedule": {"seq_len": gpt.seq_len, "start": schedule.start, "increment": schedule.increment,
                     "full_at": schedule.full_at, "steps": steps,
                     "kept": [{"step": s, "kept": k} for s, k in random_ltd.change_points(schedule, steps)]},
        "baseline_s": sum(steps_timing["baseline"].wall),
        "random_ltd_s": sum(steps_timing["random_ltd"].wall),
        "ideal_s": sum(steps_timing["ideal"].wall),
        "baseline_cpu_s": sum(steps_timing["baseline"].cpu),
        "random_ltd_cpu_s": sum(steps_timing["random_ltd"].cpu),
        "ideal_cpu_s": sum(steps_timing["ideal"].cpu),
        "layer_token_saving": 1 - layer_tokens / baseline_layer_tokens,
        "flop_saving": flop_saving,
        "realised_saving": saving(totals, "random_ltd"),
        "realised_over_flop_saving": _ratio(saving(totals, "random_ltd"), flop_saving),
        "ideal_saving": saving(totals, "ideal"),
        "ideal_over_flop_saving": _ratio(saving(totals, "ideal"), flop_saving),
        "step_kept": step_kept,
        "step_flop_saving": [1 - bench.flops(kept) / baseline_step_flops for kept in step_kept],
        "step_times_s": {name: list(timing.wall) for name, timing in steps_timing.items()},
        "step_cpu_times_s": {name: list(timing.cpu) for name, timing in steps_timing.items()},
        "realised_saving_paired": paired["random_ltd"],
        "realised_over_flop_saving_paired": _ratio(paired["random_ltd"], flop_saving),
        "ideal_saving_paired": paired["ideal"],
        "ideal_over_flop_saving_paired": _ratio(paired["ideal"], flop_saving),
    }
