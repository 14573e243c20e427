"""The run's figures (PNG): validation loss against steps, layer-tokens and wall-clock for both
arms, and the kept length and LR over training. Without matplotlib, no figures (and a note)."""
from __future__ import annotations

import json
from pathlib import Path

from random_ltd.train.config import TrainConfig
from random_ltd.train.rundir import arm_dir

COLOURS = {"baseline": "tab:blue", "random_ltd": "tab:orange", "tread": "tab:green", "mod": "tab:red"}
# (metrics key, file name part, axis label)
AXES = (("step", "steps", "steps"), ("layer_tokens", "layer_tokens", "layer-tokens"),
        ("wall_clock_s", "wall_clock", "wall-clock (s, training only)"))


def draw(root: Path, config: TrainConfig, arms: list[str]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    curves = {(arm, seed): _read(arm_dir(root, arm, seed) / "metrics.jsonl")
              for arm in arms for seed in range(config.seed, config.seed + config.seeds)}
    names = []
    metrics = ["val_loss"] + (["val_accuracy"] if config.task == "vit" else [])
    for metric in metrics:
        for key, part, label in AXES:
            name = f"{metric}_vs_{part}.png"
            _line_plot(plt, curves, key, metric, label, root / name)
            names.append(name)
    _schedule_plot(plt, curves, root / "kept_and_lr.png")
    return names + ["kept_and_lr.png"]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _points(records: list[dict], x: str, y: str) -> tuple[list, list]:
    chosen = [r for r in records if y in r]
    xs = [r.get(x, 0) for r in chosen]  # the step-0 evaluation has no counters yet: 0
    return xs, [r[y] for r in chosen]


def _line_plot(plt, curves: dict, x: str, y: str, xlabel: str, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    labelled = set()
    for (arm, _), records in curves.items():
        xs, ys = _points(records, x, y)
        axis.plot(xs, ys, marker=".", color=COLOURS.get(arm), label=None if arm in labelled else arm, alpha=0.85)
        labelled.add(arm)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(y.replace("_", " "))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _schedule_plot(plt, curves: dict, path: Path) -> None:
    figure, (kept_axis, lr_axis) = plt.subplots(1, 2, figsize=(10, 4))
    labelled = set()
    for (arm, _), records in curves.items():
        label = None if arm in labelled else arm
        labelled.add(arm)
        for axis, key in ((kept_axis, "kept"), (lr_axis, "lr")):
            xs, ys = _points(records, "step", key)
            axis.plot(xs, ys, color=COLOURS.get(arm), label=label, drawstyle="steps-post")
    kept_axis.set(xlabel="steps", ylabel="kept length (tokens per dropping layer)")
    lr_axis.set(xlabel="steps", ylabel="learning rate")
    for axis in (kept_axis, lr_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
