"""Under CI (``CI=true``), a skipped test is a failure of set-up, unless it needs a GPU.

A test that skips because a package, a data set or weights are missing never runs in CI, and
what it checks goes unchecked: the README's test command must install everything. Tests that
need CUDA skip on CPU machines and stay skipped; their skip reason must mention CUDA or a GPU.
"""
from __future__ import annotations

import os
import re

import pytest

GPU_ONLY = re.compile(r"\b(cuda|gpus?)\b", re.IGNORECASE)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report).removeprefix("Skipped: ")
    if not GPU_ONLY.search(reason):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, so its set-up is missing (only GPU-only tests may skip): {reason}"
