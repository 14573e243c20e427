"""exit_process: how distributed workers end (see its docstring for the gloo abort it avoids)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

WORKER = """
import atexit, sys
from random_ltd.integrations.distributed import exit_process

atexit.register(lambda: print("atexit ran"))
sys.stdout.write("unflushed output")   # no newline: still in the buffer when exit_process is called
try:
    exit_process(3)
finally:
    print("unwound", end=" ")         # sys.exit unwinds the stack; os._exit leaves at once
"""


def run_worker(world_size: str | None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "WORLD_SIZE"}
    if world_size is not None:
        env["WORLD_SIZE"] = world_size
    return subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=120)


def test_a_launched_worker_flushes_runs_atexit_and_skips_the_interpreters_teardown():
    done = run_worker("2")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "unflushed outputatexit ran\n"  # the stack was not unwound: the process left at once


@pytest.mark.parametrize("world_size", [None, "1"])
def test_outside_a_launch_it_is_sys_exit(world_size):
    done = run_worker(world_size)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "unflushed outputunwound atexit ran\n"
