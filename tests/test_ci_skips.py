"""Under CI, a test skipped for a missing dependency fails the run; a GPU-only skip does not."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SAMPLE = '''
import pytest

def test_needs_a_missing_package():
    pytest.importorskip("a_package_that_is_not_installed")

@pytest.mark.skipif(True, reason="Fashion-MNIST not installed")
def test_needs_missing_data():
    pass

@pytest.mark.skipif(True, reason="needs CUDA")
def test_needs_a_gpu():
    pass

@pytest.mark.xfail(reason="a known limit")
def test_known_limit():
    assert False

def test_plain():
    pass
'''


def outcomes(tmp_path: Path, ci: str | None) -> dict[str, int]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "ci_skips", "-q", "-p", "no:cacheprovider",
                           "test_sample.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    summary = done.stdout.strip().splitlines()[-1]
    return {word: int(count) for count, word in re.findall(r"(\d+) (\w+)", summary)}


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_missing_dependency_skips_fail_and_gpu_skips_stay(tmp_path, ci):
    assert outcomes(tmp_path, ci) == {"failed": 1, "error": 1, "passed": 1, "skipped": 1, "xfailed": 1}


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_every_skip_stays_a_skip(tmp_path, ci):
    assert outcomes(tmp_path, ci) == {"passed": 1, "skipped": 3, "xfailed": 1}
