"""The ablation loop against the training program: same losses for the arms both can train, so
the loop's extra arms (TokenBypass, protected random-LTD) compare fairly with the program's."""
from __future__ import annotations

import pytest
import torch

from random_ltd.ablate import loop
from random_ltd.ablate.runs import Arm, train
from random_ltd.train.arms import plan_arms
from random_ltd.train.tasks import make_task, resolve_config

TINY = dict(task="gpt", quick=True, layers=4, seq_len=16, batch_size=2, steps=3, vocab_size=256, corpus_mb=0.05,
            eval_every=2, eval_batches=1, kept_start=4, kept_increment=4, full_at=0.9, dropout=0.1)


@pytest.mark.parametrize("arm", ["baseline", "random_ltd"])
def test_loop_reproduces_the_training_program(tmp_path, arm):
    program = train(Arm.make("p", arm, TINY), tmp_path, seeds=1, device="cpu")
    looped = train(Arm.make("l", arm, TINY, method=arm), tmp_path, seeds=1, device="cpu")
    for key in ("steps", "layer_tokens", "final_val_loss"):
        assert program[0][key] == looped[0][key], key
    assert program[0]["curve"] == looped[0]["curve"]


@pytest.mark.parametrize("task", ["gpt", "bert"])
def test_tokenbypass_arm_learns_importance_and_counts_like_random_ltd(task, monkeypatch):
    settings = {**TINY, "task": task, "schedule": "constant", "kept_start": 8, "drop_layers": "1:3"}
    config = resolve_config(Arm.make("t", "random_ltd", settings).config(1, 0, "cpu"))
    prepared = make_task(config)
    prepared.prepare()
    shape = prepared.shape()
    plan = plan_arms(config, shape)["random_ltd"]
    handles = []
    original = loop.prepare

    def keep_handle(*args):
        handles.append(original(*args))
        return handles[-1]

    monkeypatch.setattr(loop, "prepare", keep_handle)
    result = loop.train_method("tokenbypass", config, prepared, shape, plan, 0, torch.device("cpu"))
    handle = handles[0]
    assert handle.drop_layers == [1, 2] and handle.keep == 8
    assert handle.importance.updates == 3 and (handle.importance.scores != handle.importance.init).any()
    assert result["layer_tokens"] == plan.layer_tokens
    assert set(loop.special_ids(prepared)) <= set(handle.selector.special_ids.tolist())
