"""Launching commands and multi-process runs from the integration tests."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]  # rendezvous on a port the OS picks


def free_port() -> int:
    """A port free now (another process may take it before it is used): only for launchers without ``--standalone``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_command(command: list[str], cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``command``; on failure the test fails with the tail of its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
    return done


def torchrun(script: Path | str, *args: str, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [*TORCHRUN, f"--nproc-per-node={nproc}", str(script), *args]
    return run_command(command, timeout=timeout)


def accelerate_launch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``accelerate launch ARGS`` with a free port (the rest as given)."""
    accelerate = str(Path(sys.executable).parent / "accelerate")
    return run_command([accelerate, "launch", f"--main_process_port={free_port()}", *args], timeout=timeout)


STEP_LINE = re.compile(r"step +(\d+) +loss ([\d.]+) +kept +(\d+) +layer-tokens (\d+) +lr ([\d.e+-]+)")


def check_training_log(output: str, schedule, *, steps: int, batch_size: int, num_layers: int,
                       drop_layers: list[int], every: int = 1) -> list[tuple]:
    """Check the ``step N  loss L  kept K  layer-tokens T  lr R`` lines the examples print against
    the schedule and a brute-force layer-token count; return the parsed rows."""
    rows = [(int(s), float(loss), int(k), int(t), float(lr)) for s, loss, k, t, lr in STEP_LINE.findall(output)]
    printed = [s for s in range(1, steps + 1) if s % every == 0 or s == steps]
    assert [row[0] for row in rows] == printed, output[-2000:]
    kept = [schedule(step) for step in range(steps)]
    consumed = [sum(batch_size * (len(drop_layers) * k + (num_layers - len(drop_layers)) * schedule.seq_len)
                    for k in kept[:s]) for s in range(1, steps + 1)]
    assert [row[2] for row in rows] == [kept[s - 1] for s in printed]
    assert [row[3] for row in rows] == [consumed[s - 1] for s in printed]
    assert all(0 < row[1] < 10 for row in rows)
    return rows
