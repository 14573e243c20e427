"""Peak memory of one layer-stack training step, each variant in a fresh subprocess.

A fresh process per variant, so that no variant inherits another's allocator caches or high-water
mark. On CPU the peak is the resident set's high-water mark (``VmHWM``), reset just before the
measured step through ``/proc/self/clear_refs``; ``step_peak_bytes`` is that peak minus the
resident set before the step (weights, inputs). The subprocess runs with a fixed glibc mmap
threshold, so freed blocks leave the resident set at once and the warm-up step's leftovers do
not hide the measured step's own peak. On CUDA it is
``torch.cuda.max_memory_allocated`` around the step, minus the memory allocated before it.

The subprocess runs ``python -m random_ltd.bench.memory_worker '<json request>'``, which prints
one JSON object.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys

import torch

from random_ltd.bench.config import DTYPES, StackShape

_STATUS = "/proc/self/status"


def _status_bytes(field: str) -> int | None:
    try:
        with open(_STATUS) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    """Reset ``VmHWM`` to the current resident set (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _measure_cpu(step) -> dict:
    reset = _reset_cpu_peak()
    before = _status_bytes("VmRSS") or 0
    step()
    peak = _status_bytes("VmHWM") if reset else None
    if peak is None:  # no reset possible: the process-lifetime peak (includes set-up)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": "VmHWM" if reset else "ru_maxrss", "peak_bytes": peak, "step_peak_bytes": peak - before}


def _measure_cuda(step, device: torch.device) -> dict:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"method": "cuda_max_allocated", "peak_bytes": peak, "step_peak_bytes": peak - before}


def measure_here(shape: StackShape, variant: str, keep: int | None, device: str, dtype: str, seed: int = 0) -> dict:
    """Build the stack, run one warm-up step, then measure one step of ``variant``."""
    from random_ltd.bench.stack import StackBench

    torch_device = torch.device(device)
    bench = StackBench(shape, torch_device, DTYPES[dtype], seed)
    bench.run(variant, keep)
    bench.stack.zero_grad(set_to_none=True)
    bench.inputs.grad = None
    return measure_step(lambda: bench.run(variant, keep), torch_device)


def measure_step(step, device: torch.device) -> dict:
    """Peak memory of one call of ``step`` on ``device``, measured in this process (see the module doc)."""
    if device.type == "cuda":
        return _measure_cuda(step, device)
    return _measure_cpu(step)


def measure_in_subprocess(shape: StackShape, variant: str, keep: int | None, device: str, dtype: str,
                          seed: int = 0, threads: int | None = None, timeout: float = 900) -> dict:
    request = {"shape": dataclasses.asdict(shape), "variant": variant, "keep": keep, "device": device,
               "dtype": dtype, "seed": seed, "threads": threads}
    completed = subprocess.run(
        [sys.executable, "-m", "random_ltd.bench.memory_worker", json.dumps(request)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"memory subprocess for {variant}@{keep} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
