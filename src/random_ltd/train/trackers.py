"""Experiment trackers for ``random-ltd train --report-to tensorboard,wandb,mlflow``.

One tracker run per command: each arm's per-step metrics go under ``<arm>/seed<k>/<name>`` with
the arm's own step, the comparison summary under ``summary/...``. Every adapter has the same
three methods (``log_step``, ``log_summary``, ``close``); ``Trackers`` fans out to the chosen
ones. Only rank 0 reports. A resumed run opens a new tracker run and logs the steps it trains.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from random_ltd.train.config import TrainConfig, flag_error

# tracker name -> (module to import, package to install)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
TRACKERS = tuple(PACKAGES)
PROJECT = "random-ltd"


def check_installed(names: tuple[str, ...]) -> None:
    """A ``ConfigError`` naming the package to install for the first tracker whose package is missing."""
    for name in names:
        module, package = PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise flag_error("report_to", f"{name} is not installed: pip install {package}") from None


def numeric(values: dict, prefix: str) -> dict[str, float]:
    """The numbers of ``values`` (nested dicts flattened with '/'), keys prefixed."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(numeric(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def step_metrics(arm: str, seed: int, record: dict) -> tuple[int, dict[str, float]]:
    step = int(record["step"])
    return step, numeric({k: v for k, v in record.items() if k != "step"}, f"{arm}/seed{seed}/")


def summary_metrics(summary: dict) -> dict[str, float]:
    arms = {arm: {k: v for k, v in values.items() if k != "seeds"} for arm, values in summary["arms"].items()}
    return numeric({"arms": arms, "comparison": summary.get("comparison", {})}, "summary/")


class TensorBoardTracker:
    """Event files under ``<run folder>/tensorboard``; the report's table as text."""

    def __init__(self, root: Path, config: TrainConfig):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(root / "tensorboard"))
        self.writer.add_text("config", f"```\n{json.dumps(config.to_dict(), indent=2)}\n```")

    def log_step(self, arm: str, seed: int, record: dict) -> None:
        step, values = step_metrics(arm, seed, record)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def log_summary(self, summary: dict) -> None:
        from random_ltd.train.report import table

        for tag, value in summary_metrics(summary).items():
            self.writer.add_scalar(tag, value, global_step=0)
        self.writer.add_text("summary", table(summary))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run (offline with ``WANDB_MODE=offline``); each arm's metrics on its own step axis."""

    def __init__(self, root: Path, config: TrainConfig):
        import wandb

        # an absolute folder: W&B's service process may have started in another working directory
        self.run = wandb.init(project=PROJECT, name=root.name, dir=str(root.resolve()), config=config.to_dict(),
                              reinit="create_new")
        self._axes: set[str] = set()

    def log_step(self, arm: str, seed: int, record: dict) -> None:
        step, values = step_metrics(arm, seed, record)
        axis = f"{arm}/seed{seed}"
        if axis not in self._axes:
            self.run.define_metric(f"{axis}/step")
            self.run.define_metric(f"{axis}/*", step_metric=f"{axis}/step")
            self._axes.add(axis)
        self.run.log({**values, f"{axis}/step": step})

    def log_summary(self, summary: dict) -> None:
        self.run.summary.update(summary_metrics(summary))

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """One MLflow run (tracking URI from ``MLFLOW_TRACKING_URI``, e.g. a local ``file:`` store);
    summary.json as an artifact."""

    def __init__(self, root: Path, config: TrainConfig):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(PROJECT)
        self.run = mlflow.start_run(run_name=root.name)
        mlflow.log_params({k: str(v)[:500] for k, v in config.to_dict().items()})

    def log_step(self, arm: str, seed: int, record: dict) -> None:
        step, values = step_metrics(arm, seed, record)
        self.mlflow.log_metrics(values, step=step, run_id=self.run.info.run_id)

    def log_summary(self, summary: dict) -> None:
        self.mlflow.log_metrics(summary_metrics(summary), step=0, run_id=self.run.info.run_id)
        self.mlflow.log_dict(summary, "summary.json", run_id=self.run.info.run_id)

    def close(self) -> None:
        self.mlflow.end_run()


ADAPTERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


class Trackers:
    """The chosen trackers behind one interface; with none, every call does nothing."""

    def __init__(self, trackers: list[Any]):
        self.trackers = trackers

    @classmethod
    def open(cls, names: tuple[str, ...], root: Path, config: TrainConfig) -> Trackers:
        check_installed(names)
        return cls([ADAPTERS[name](root, config) for name in names])

    def log_step(self, arm: str, seed: int, record: dict) -> None:
        for tracker in self.trackers:
            tracker.log_step(arm, seed, record)

    def log_summary(self, summary: dict) -> None:
        for tracker in self.trackers:
            tracker.log_summary(summary)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
