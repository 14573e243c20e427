"""Atomic checkpoints: a run killed at any moment (even by SIGKILL) leaves either the previous
checkpoint or the new one, never a torn file.

A checkpoint holds everything the next step depends on: model, optimizer, the driver (step,
layer-token counter, kept-length schedule, LR schedule, and the random-LTD handle's seed and
kept length), the arm's own torch RNG state (dropout, and the stream random-LTD's draws come
from), and the run's bookkeeping (wall-clock so far, FLOPs, evaluations, how many bytes of ``metrics.jsonl``
belong to it). Data order is a pure function of (seed, step), so the step is the data position.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
FILENAME = "checkpoint.pt"


def save_atomic(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(temporary, "wb") as stream:
        torch.save({"format": FORMAT, **state}, stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or ``None`` when there is none."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} is a checkpoint of format {state.get('format')!r}, this version reads {FORMAT}")
    return state


def truncate(path: Path, size: int) -> None:
    """Cut ``metrics.jsonl`` back to what the checkpoint covered (lines of lost steps go)."""
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as stream:
            stream.truncate(size)


class MetricsLog:
    """The arm's ``metrics.jsonl`` (one JSON line per step), cut back on resume to the ``covered``
    bytes its checkpoint recorded; ``covered()`` is what a checkpoint saved now covers. Only the
    main rank writes (other ranks write nowhere); ``listener`` sees every record written
    (experiment trackers)."""

    def __init__(self, path: Path, covered: int, is_main: bool, listener: Callable[[dict], None] | None = None):
        self.path = path if is_main else Path(os.devnull)
        self.listener = listener
        if is_main:
            truncate(path, covered)
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.listener is not None:
            self.listener(record)

    def covered(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()
