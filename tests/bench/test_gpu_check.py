"""``scripts/gpu-check --dry-run``: every step at tiny sizes on the CPU, files written, budget kept.

The dry run checks the machinery a GPU run depends on (a GPU is lent rarely and for minutes); its
figures mean nothing. It runs once per session (module fixture), in a subprocess as a person would.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu-check"
pytestmark = pytest.mark.slow


def _run(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("OUT", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    # a larger budget than the default 170 s, so that a busy CI machine still runs every step
    completed = _run("--dry-run", "--out", str(out), "--budget", "600", timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out, json.loads((out / "gpu-check.json").read_text()), completed.stdout


def _script_module(monkeypatch):
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_check", loader))
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclasses look their module up
    loader.exec_module(module)
    return module


def test_the_dry_run_completes_every_step_and_writes_both_files(dry_run):
    out, result, stdout = dry_run
    assert result["complete"] and result["dry_run"]
    names = [step["name"] for step in result["steps"]]
    assert names[:2] == ["environment", "cuda tests"] and "mslg run" in names
    assert any("flex" in name and "compiled" in name for name in names)
    assert all(step["status"] in ("ok", "failed") for step in result["steps"]), names  # none skipped or stopped
    page = (out / "gpu-check.md").read_text()
    assert "DRY RUN" in page and "## Targets" in page
    assert stdout.count("[gpu-check") >= 2 * len(names)  # a start and an end line per step


def test_every_eager_step_of_the_dry_run_measures(dry_run):
    _, result, _ = dry_run
    eager = [step for step in result["steps"] if "compiled" not in step["name"]]
    failed = {step["name"]: step.get("note") for step in eager if step["status"] != "ok"}
    assert not failed
    stacks = [step["result"] for step in eager if step["name"].startswith("stack ")]
    assert stacks and all(row["flop_saving"] > 0 and row["peak_bytes"]["ltd"] is not None
                          for stack in stacks for row in stack["keeps"])
    flex = [stack for stack in stacks if stack["shape"]["family"] == "llama" and stack["mask_builds"]["count"]]
    assert flex and flex[0]["mask_builds"]["kept_count"] >= 1  # random-LTD's own BlockMasks are counted
    run = next(step["result"] for step in eager if step["name"] == "mslg run")
    assert 0 < run["flop_saving"] < 1


def test_every_compiled_step_of_the_dry_run_measures(dry_run):
    _, result, _ = dry_run
    compiled = {step["name"]: step.get("note") for step in result["steps"] if "compiled" in step["name"]}
    assert compiled and all(note is None for note in compiled.values()), compiled


def test_a_dry_run_refuses_to_write_into_docs():
    completed = _run("--dry-run", "--out", str(REPO / "docs" / "gpu"), timeout=120)
    assert completed.returncode == 2 and "docs/" in completed.stderr


def test_a_step_past_the_budget_is_stopped_and_the_rest_skipped(tmp_path, monkeypatch):
    script = _script_module(monkeypatch)
    began = time.monotonic()
    record = script._run_step(lambda left, say: time.sleep(30), 1, print)
    assert record["status"] == "stopped" and time.monotonic() - began < 10
    config = script.settings(dry_run=True, device="cpu")
    result = script.run_steps(config, tmp_path, budget=0.0, only=None)
    assert {step["status"] for step in result["steps"]} == {"skipped"}
    assert json.loads((tmp_path / "gpu-check.json").read_text())["complete"]
