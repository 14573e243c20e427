"""examples/diffusers_loop.py: random-LTD (or span routing) in a user's own diffusers training loop."""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import random_ltd

pytest.importorskip("diffusers")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "diffusers_loop.py"


def run_example(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The example run with the random_ltd these tests import (also from a source checkout)."""
    source = str(Path(random_ltd.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)


def test_random_ltd_trains_with_a_growing_kept_length_and_samples_in_full(tmp_path):
    done = run_example("--steps", "8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    kept = [int(k) for k in re.findall(r"kept (\d+) of 64 tokens", done.stdout)]
    assert len(kept) == 8 and kept == sorted(kept) and kept[0] < 64 and kept[-1] == 64
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", done.stdout).groups())
    assert last < first
    assert "samples (4, 4, 16, 16), finite: True" in done.stdout


def test_routes_run_where_apply_takes_them_and_say_so_where_not(tmp_path):
    done = run_example("--steps", "3", "--routes", cwd=tmp_path)
    if "routes" in inspect.signature(random_ltd.apply).parameters:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "finite: True" in done.stdout
    else:
        assert done.returncode != 0 and "no routes= (span routing)" in done.stderr
