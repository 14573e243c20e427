"""The run folder: where a run writes, and the checks that guard it before training starts.

Layout::

    OUT/config.json                  the resolved configuration (what --resume compares)
    OUT/<arm>/seed<k>/metrics.jsonl  one line per step (and step 0: the initial evaluation)
    OUT/<arm>/seed<k>/checkpoint.pt  latest checkpoint (atomic); result.json once the arm is done
    OUT/summary.json, OUT/report.md, OUT/*.png
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from random_ltd.train.config import TrainConfig, flag_error

CONFIG_FILE = "config.json"


def arm_dir(root: Path, arm: str, seed: int) -> Path:
    return root / arm / f"seed{seed}"


def default_out(config: TrainConfig) -> str:
    return str(Path("runs") / f"{config.task}-{time.strftime('%Y%m%d-%H%M%S')}")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise flag_error("device", f"{name!r} is not a torch device (try cpu, cuda, cuda:1 or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise flag_error("device", f"{name!r} asked for, but torch sees no CUDA device here")
    return device


@dataclasses.dataclass
class RunDir:
    root: Path

    @classmethod
    def open(cls, config: TrainConfig, resume: bool) -> RunDir:
        """Check the folder: a new run needs a folder without a run; ``resume`` needs a checkpoint
        of the same configuration."""
        if resume:
            if config.out is None:
                raise flag_error("resume", "needs the run folder to continue")
            root = Path(config.out)
            check_resumable(root, config)
            return cls(root)
        root = Path(config.out or default_out(config))
        if (root / CONFIG_FILE).exists():
            raise flag_error("out", f"{root} already holds a run: continue it with --resume {root}, "
                                    "or choose another --out")
        return cls(root)

    def original_command(self) -> str | None:
        return json.loads((self.root / CONFIG_FILE).read_text()).get("command")

    def create(self, config: TrainConfig, command: str | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / CONFIG_FILE).exists():
            saved = {"config": config.to_dict(), "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            (self.root / CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")


def saved_config(root: Path) -> TrainConfig:
    path = root / CONFIG_FILE
    if not path.exists():
        raise flag_error("resume", f"{root} holds no run of random-ltd train (no {CONFIG_FILE})")
    return TrainConfig.from_dict(json.loads(path.read_text())["config"])


def check_resumable(root: Path, config: TrainConfig) -> None:
    saved = saved_config(root)
    has_progress = any(root.glob("*/seed*/checkpoint.pt")) or any(root.glob("*/seed*/result.json"))
    if not has_progress:
        raise flag_error("resume", f"{root} holds no checkpoint (the run stopped before its first one): start it anew")
    differences = saved.differences(config)
    if differences:
        listed = ", ".join(f"{name}={theirs!r} (saved: {mine!r})" for name, (mine, theirs) in differences.items())
        raise flag_error("resume", f"{root} was run with a different configuration: {listed}")
