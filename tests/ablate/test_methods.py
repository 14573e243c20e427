"""The ablation's methods on the training program's loop: both engines give the same numbers for
every method, TokenBypass learns its importance after each step, and its arm resumes exactly."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from random_ltd.ablate import methods
from random_ltd.ablate.runs import Arm, train
from random_ltd.train import run_training
from random_ltd.train.arms import plan_arms
from random_ltd.train.program import train_arm
from random_ltd.train.rundir import arm_dir
from random_ltd.train.tasks import make_task, resolve_config

TINY = dict(task="gpt", quick=True, layers=4, seq_len=16, batch_size=2, steps=3, vocab_size=256, corpus_mb=0.05,
            eval_every=2, eval_batches=1, kept_start=4, kept_increment=4, full_at=0.9, dropout=0.1, drop_layers="1:3")


@pytest.mark.parametrize("arm,method", [("baseline", None), ("random_ltd", None), ("random_ltd", "tokenbypass"),
                                        ("random_ltd", "random_ltd_protected")])
def test_bare_engine_reproduces_the_training_program(tmp_path, arm, method):
    settings = {**TINY, "task": "bert"} if method == "random_ltd_protected" else TINY
    program = train(Arm.make("p", arm, settings, method), tmp_path, seeds=1, device="cpu")
    bare = train(Arm.make("b", arm, settings, method).for_engine("bare"), tmp_path, seeds=1, device="cpu")
    for key in ("steps", "layer_tokens", "final_val_loss", "curve"):
        assert program[0][key] == bare[0][key], key


def test_methods_change_the_losses(tmp_path):
    losses = {method: train(Arm.make(method, "random_ltd", {**TINY, "task": "bert"}, method), tmp_path, seeds=1,
                            device="cpu")[0]["final_val_loss"] for method in methods.METHODS}
    assert len(set(losses.values())) == len(losses)


class Recording(methods.TokenBypass):
    def __init__(self):
        self.handles, self.updates = [], 0

    def prepare(self, *args):
        self.handles.append(super().prepare(*args))
        return self.handles[-1]

    def after_backward(self, handle, task, batch, output):
        assert handle.keep == 8 and output.logits.shape[:2] == batch["input_ids"].shape
        self.updates += 1
        super().after_backward(handle, task, batch, output)


@pytest.mark.parametrize("task", ["gpt", "bert"])
def test_tokenbypass_arm_learns_importance_and_counts_like_random_ltd(task, tmp_path):
    settings = {**TINY, "task": task, "schedule": "constant", "kept_start": 8}
    config = resolve_config(Arm.make("t", "random_ltd", settings).config(1, 0, "cpu"))
    prepared = make_task(config)
    prepared.prepare()
    shape = prepared.shape()
    plan = plan_arms(config, shape)["random_ltd"]
    method = Recording()
    result = train_arm(config, prepared, shape, plan, 0, tmp_path, torch.device("cpu"), method=method)
    handle = method.handles[0]
    assert handle.drop_layers == [1, 2] and method.updates == 3
    assert handle.importance.updates == 3 and (handle.importance.scores != handle.importance.init).any()
    assert result["layer_tokens"] == plan.layer_tokens
    assert set(methods.special_ids(prepared)) <= set(handle.selector.special_ids.tolist())


class Killed(Exception):
    pass


def test_tokenbypass_arm_resumes_exactly(tmp_path):
    config = dataclasses.replace(Arm.make("t", "random_ltd", {**TINY, "steps": 5, "checkpoint_every": 2})
                                 .config(1, 0, "cpu"), out=str(tmp_path / "whole"))
    run_training(config, method=methods.METHODS["tokenbypass"])

    def kill(arm, seed, step):
        if step == 3:
            raise Killed

    cut = dataclasses.replace(config, out=str(tmp_path / "cut"))
    with pytest.raises(Killed):
        run_training(cut, on_step=kill, method=methods.METHODS["tokenbypass"])
    run_training(cut, resume=True, method=methods.METHODS["tokenbypass"])

    def records(name):
        lines = (arm_dir(tmp_path / name, "random_ltd", 0) / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "wall_clock_s"} for line in lines]

    assert records("cut") == records("whole") and len(records("whole")) == 6
