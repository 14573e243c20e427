"""examples/interleaved_timing.py: both arms of the training program, stepped in lockstep."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_prints_summed_and_paired_savings_for_the_steps_asked(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "interleaved_timing.py"), "--task", "gpt", "--quick", "--steps", "4",
         "--threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = done.stdout.strip().splitlines()[-2:]
    assert first.startswith("gpt: 4 rounds in lockstep; baseline ")
    match = re.search(r"paired ([+-][\d.]+)% \(95% interval [+-][\d.]+% to [+-][\d.]+%\); FLOP saving ([+-][\d.]+)%",
                      second)
    assert match, second
    assert 0 < float(match.group(2)) < 100  # the quick schedule drops tokens in its first steps
