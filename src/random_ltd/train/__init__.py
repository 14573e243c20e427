"""``random-ltd train``: baseline and random-LTD side by side on real data, with a report.

    from random_ltd.train import TrainConfig, run_training
    summary = run_training(TrainConfig(task="gpt", quick=True, out="runs/quick"))

``program.py`` is the training program (read it top to bottom); ``config.py`` the typed
configuration; ``tasks/`` the tasks (gpt, bert, vit, finetune); ``data.py`` the corpora and
tokenizer; ``checkpoint.py`` atomic save/resume; ``report.py`` and ``plots.py`` the outputs.
"""
from random_ltd.train.config import ConfigError, TrainConfig
from random_ltd.train.program import run_training

__all__ = ["ConfigError", "TrainConfig", "run_training"]
