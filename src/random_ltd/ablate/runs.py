"""One arm of a study, trained for every seed, and its per-seed results in one uniform form.

An arm is a ``random-ltd train`` configuration plus which of its arms to train and, for the
ablation's other methods, the method (``random_ltd.ablate.methods``) the training loop applies.
Arms are stored by a hash of what they compute under ``ROOT/runs/``, so studies that share an arm
(the baseline, the default random-LTD) train it once, and an interrupted study continues where it
stopped. Every arm is trained by the training program's loop (``train_arm``): with the
``program`` engine through ``run_training`` (a run folder with its report and plots), with
``bare`` one ``train_arm`` per seed and no report (the same numbers in seconds, for CI).

Times: arms train in parallel processes under whatever else loads the machine, so wall-clock
compares them badly. Each result carries ``cpu_s``, the process CPU time of its training steps
(one torch thread per process), which the training program sums over its steps for every method.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from random_ltd.ablate.methods import METHODS
from random_ltd.train import TrainConfig, run_training
from random_ltd.train.arms import plan_arms
from random_ltd.train.program import train_arm
from random_ltd.train.report import write_json
from random_ltd.train.rundir import arm_dir, pick_device
from random_ltd.train.tasks import Task, make_task, resolve_config

ENGINES = ("program", "bare")
# Fields that only shape the dropping arms: an arm that does not read one drops it from its
# settings, so it leaves the arm's key (the baseline of every study is one run).
RANDOM_LTD_FIELDS = ("drop_layers", "schedule", "kept_start", "kept_increment", "kept_every", "full_at",
                     "lr_clock", "budget_ratio")
MOD_ONLY_FIELDS = ("mod_capacity", "mod_aux_coef")
ARM_FIELDS = {
    "baseline": (),
    "random_ltd": RANDOM_LTD_FIELDS,
    "tread": ("drop_layers", "lr_clock"),  # its route keeps a fixed fraction (``train/tread.py``)
    "mod": ("drop_layers", "lr_clock") + MOD_ONLY_FIELDS,  # a fixed capacity (``train/mod_arm.py``)
}
ARMS = tuple(ARM_FIELDS)


@dataclasses.dataclass(frozen=True)
class Arm:
    """``label``: the name in tables; ``arm``: one of ``ARMS`` (whose plan — steps, schedule,
    layers, LR — it follows); ``settings``: ``TrainConfig`` fields; ``method``: ``None``
    for the arm's own (random-LTD for ``random_ltd``), else a ``METHODS`` name; ``engine``: one of
    ``ENGINES``."""

    label: str
    arm: str
    settings: tuple[tuple[str, Any], ...]
    method: str | None = None
    engine: str = "program"

    @classmethod
    def make(cls, label: str, arm: str, settings: dict, method: str | None = None) -> Arm:
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {', '.join(ARMS)}, got {arm!r}")
        if method is not None and (method not in METHODS or arm != "random_ltd"):
            raise ValueError(f"unknown method {method!r} for the {arm} arm")
        unread = set(RANDOM_LTD_FIELDS + MOD_ONLY_FIELDS) - set(ARM_FIELDS[arm])
        settings = {k: v for k, v in settings.items() if k not in unread}
        return cls(label, arm, tuple(sorted(settings.items())), method)

    def config(self, seeds: int, seed: int, device: str) -> TrainConfig:
        return TrainConfig(**dict(self.settings), arms=(self.arm,), seeds=seeds, seed=seed, device=device,
                           progress=False)

    def key(self, seeds: int, seed: int) -> str:
        engine = [] if self.engine == "program" else [self.engine]
        text = json.dumps([self.arm, self.method, self.settings, seeds, seed, *engine], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def for_engine(self, engine: str) -> Arm:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        return dataclasses.replace(self, engine=engine)

    def folder(self, root: Path, seeds: int, seed: int) -> Path:
        kind = self.method or self.arm
        return Path(root) / "runs" / f"{kind}-{self.key(seeds, seed)}"


def is_trained(arm: Arm, root: Path, seeds: int, seed: int = 0) -> bool:
    folder = arm.folder(root, seeds, seed)
    if arm.engine == "program":
        return (folder / "summary.json").exists()
    return all((arm_dir(folder, arm.arm, k) / "result.json").exists() for k in range(seed, seed + seeds))


def covering_count(arm: Arm, root: Path, seeds: int, seed: int, counts: tuple[int, ...]) -> int | None:
    """The smallest of ``counts`` above ``seeds`` that ``arm`` is already trained with from ``seed``:
    its first ``seeds`` seeds are the same runs (a seed's result depends on that seed only)."""
    return next((count for count in sorted(counts) if count > seeds and is_trained(arm, root, count, seed)), None)


def train(arm: Arm, root: Path, seeds: int, seed: int = 0, device: str = "auto",
          counts: tuple[int, ...] = ()) -> list[dict]:
    """Train ``arm`` for seeds ``seed .. seed+seeds-1`` (or reuse what is stored, also from a run
    with more seeds among ``counts``); per-seed results."""
    more = covering_count(arm, root, seeds, seed, counts) if not is_trained(arm, root, seeds, seed) else None
    if more is not None:
        return train(arm, root, more, seed, device)[:seeds]
    folder = arm.folder(root, seeds, seed)
    config = arm.config(seeds, seed, device)
    if arm.engine == "program":
        return with_training_program(arm, config, folder)
    return with_train_arm(arm, config, folder)


def method_of(arm: Arm):
    return METHODS[arm.method or "random_ltd"]


def with_training_program(arm: Arm, config: TrainConfig, folder: Path) -> list[dict]:
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        resumable = any(folder.glob("*/seed*/checkpoint.pt")) or any(folder.glob("*/seed*/result.json"))
        if folder.exists() and not resumable:
            shutil.rmtree(folder)  # started but never reached a checkpoint: nothing to keep
        run_training(dataclasses.replace(config, out=str(folder)), resume=resumable,
                     command=f"random_ltd.ablate: {arm.label}", method=method_of(arm))
    summary = json.loads(summary_path.read_text())
    return [with_curve(result, folder, arm.arm) for result in summary["arms"][arm.arm]["seeds"]]


def with_train_arm(arm: Arm, config: TrainConfig, folder: Path) -> list[dict]:
    """Each seed trained by ``train_arm`` (it resumes, or reads back a finished seed), no run report."""
    resolved = resolve_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", {"label": arm.label, "method": arm.method, "config": resolved.to_dict()})
    task = prepared_task(resolved)
    shape = task.shape()
    plan = plan_arms(resolved, shape)[arm.arm]
    device = pick_device(resolved.device)
    return [with_curve(train_arm(resolved, task, shape, plan, seed, folder, device, method=method_of(arm)),
                       folder, arm.arm)
            for seed in range(config.seed, config.seed + config.seeds)]


def with_curve(result: dict, folder: Path, arm: str) -> dict:
    """A seed's result with its validation curve (``[step, layer_tokens, val_loss, flops]`` per evaluation)."""
    curve = []
    for line in (arm_dir(folder, arm, result["seed"]) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val_loss" in record:
            curve.append([record["step"], record.get("layer_tokens", 0), record["val_loss"], record.get("flops", 0)])
    return {**result, "curve": curve}


_PREPARED: dict[str, Task] = {}
# Fields a task never reads (they steer the optimizer, the budget, random-LTD and the run).
_NOT_DATA = RANDOM_LTD_FIELDS + MOD_ONLY_FIELDS + ("arms", "seed", "seeds", "out", "progress", "device", "eval_every",
                                  "checkpoint_every", "steps", "tokens", "lr", "lr_decay", "warmup",
                                  "min_lr_ratio", "weight_decay", "grad_clip")


def prepared_task(config: TrainConfig) -> Task:
    """The task with its data loaded, shared by every arm of this process that reads the same data
    (loading scans and encodes the corpus: seconds, which tiny --quick arms should not pay each)."""
    key = json.dumps({k: v for k, v in config.to_dict().items() if k not in _NOT_DATA}, sort_keys=True)
    if key not in _PREPARED:
        task = make_task(config)
        task.prepare()
        _PREPARED[key] = task
    return _PREPARED[key]
