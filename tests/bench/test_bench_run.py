"""run_bench: sections in a fixed order, the result so far handed over after each one."""
from __future__ import annotations

import copy

import torch

from random_ltd import bench
from random_ltd.bench import sections
from random_ltd.bench.config import quick_config


def test_each_finished_section_is_handed_over_in_order(monkeypatch):
    calls: list[str] = []

    def fake(name, value):
        def measure(*args, **kwargs):
            calls.append(name)
            return value
        return measure
    monkeypatch.setattr(sections, "stack_section", fake("stack", {"keeps": []}))
    monkeypatch.setattr(sections, "train_section", fake("train", {"keeps": []}))
    monkeypatch.setattr(sections, "whole_run_section", fake("run", None))
    snapshots: list[dict] = []
    threads = torch.get_num_threads()
    config = quick_config(sections=("run", "train", "stack"), threads=1)
    result = bench.run_bench(config, progress=lambda message: None,
                             on_section=lambda so_far: snapshots.append(copy.deepcopy(so_far)))
    assert calls == ["stack", "train", "run"]
    assert [sorted(k for k in s if k in ("stack", "train_step", "whole_run")) for s in snapshots] == [
        ["stack"], ["stack", "train_step"], ["stack", "train_step", "whole_run"]]
    assert all(s["complete"] is False for s in snapshots)
    assert result["complete"] is True and "end" in result["conditions"]
    assert torch.get_num_threads() == threads
