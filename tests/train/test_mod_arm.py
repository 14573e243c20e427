"""The ``mod`` arm of ``random-ltd train``: Mixture-of-Depths planned, counted and trained."""
import json

import pytest
import torch

from random_ltd import mod
from random_ltd.accounting import capacity_length, mod_flops_per_step, mod_layer_tokens_per_step
from random_ltd.train import run_training
from random_ltd.train.arms import plan_arms, step_flops
from random_ltd.train.config import ConfigError, TrainConfig, resolve
from random_ltd.train.mod_arm import single_sequences
from random_ltd.train.program import build_arm
from random_ltd.train.rundir import arm_dir
from random_ltd.train.tasks import ModelShape, make_task, resolve_config

SHAPE = ModelShape(num_layers=6, hidden=64, seq_len=128, ffn_hidden=256, vocab_size=512)


def _plans(**changes):
    settings = dict(steps=100, batch_size=4, seq_len=128, kept_start=16, kept_increment=8, full_at=0.7,
                    arms=("baseline", "random_ltd", "mod"))
    config = resolve_config(TrainConfig(**{**settings, **changes}))
    return config, plan_arms(config, SHAPE)


@pytest.mark.parametrize("capacity", [0.5, 0.125, 1.0])
def test_mod_plan_counts_the_routed_layer_tokens_and_flops_router_included(capacity):
    config, plans = _plans(mod_capacity=capacity, drop_layers="1::2")
    plan = plans["mod"]
    assert plan.steps == plans["baseline"].steps and plan.drop_layers == (1, 3, 5)
    assert plan.schedule(0) == plan.schedule(99) == capacity_length(capacity, 128)
    assert plan.layer_tokens == 100 * mod_layer_tokens_per_step(128, 4, 6, [1, 3, 5], capacity)
    assert plan.layer_tokens == 100 * 4 * (3 * 128 + 3 * capacity_length(capacity, 128))
    flops = step_flops(config, SHAPE, plan, plan.schedule(0))
    assert flops == mod_flops_per_step(128, 4, 6, 64, routed_layers=[1, 3, 5], capacity=capacity, ffn_dim=256,
                                       vocab_size=512)
    dropping = step_flops(config, SHAPE, plans["random_ltd"], plan.schedule(0))
    assert flops == dropping + 3 * 4 * 3 * 2 * 128 * 64  # the routers: 2 s d per routed layer, forward and backward


def test_the_mod_arm_is_opt_in():
    assert "mod" not in _plans(arms=("baseline", "random_ltd"))[1]


@pytest.mark.parametrize("changes, flag", [({"mod_capacity": 0.0}, "mod_capacity"),
                                           ({"mod_capacity": 1.5}, "mod_capacity"),
                                           ({"mod_aux_coef": -1.0}, "mod_aux_coef")])
def test_bad_mod_settings_name_their_flag(changes, flag):
    with pytest.raises(ConfigError, match=flag.replace("_", "[-_]")):
        TrainConfig(**changes)


def test_the_mod_arm_builds_its_optimizer_over_the_routers_and_ignores_the_drivers_kept_length(tiny):
    config = resolve(tiny(arms=("baseline", "mod"), drop_layers="1::2"))
    task = make_task(config)
    task.prepare()
    shape = task.shape()
    plan = plan_arms(config, shape)["mod"]
    model, optimizer, driver = build_arm(config, task, shape, plan, 0, torch.device("cpu"))
    routers = [p for name, p in model.named_parameters() if f".{mod.ROUTER_NAME}." in name]
    assert len(routers) == 2 * len(plan.drop_layers)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in routers} <= optimized
    assert driver.before_step() == capacity_length(0.5, shape.seq_len)  # set_keep would raise on MoD's handle


def test_quick_run_trains_the_mod_arm_and_reports_its_layer_tokens(tiny, tmp_path):
    config = tiny(arms=("baseline", "random_ltd", "mod"), drop_layers="1::2", steps=4, eval_every=2)
    summary = run_training(config)
    resolved = resolve(config)
    task = make_task(resolved)
    task.prepare()
    shape = task.shape()
    routed = list(range(1, shape.num_layers, 2))
    expected = 4 * mod_layer_tokens_per_step(shape.seq_len, resolved.batch_size, shape.num_layers, routed, 0.5)
    arm = summary["arms"]["mod"]
    assert arm["layer_tokens"] == expected < summary["arms"]["baseline"]["layer_tokens"]
    records = [json.loads(line) for line in (arm_dir(tmp_path / "run", "mod", 0) / "metrics.jsonl").read_text()
               .splitlines()]
    trained = [record for record in records if "train_loss" in record]
    assert len(trained) == 4 and all(record["mod/aux_loss"] > 0 for record in trained)
    assert all("mod/aux_loss" not in record for record in
               (json.loads(line) for line in (arm_dir(tmp_path / "run", "random_ltd", 0) / "metrics.jsonl")
                .read_text().splitlines()))
    assert records[-1]["flops"] == 4 * mod_flops_per_step(
        shape.seq_len, resolved.batch_size, shape.num_layers, shape.hidden, routed_layers=routed, capacity=0.5,
        ffn_dim=shape.ffn_hidden, vocab_size=shape.vocab_size)


def test_single_sequences_cut_batches_along_their_first_dimension():
    batch = {"input_ids": torch.arange(6).view(3, 2), "labels": torch.arange(6).view(3, 2) + 10, "note": "x"}
    cut = single_sequences([batch])
    assert len(cut) == 3 and all(part["note"] == "x" for part in cut)
    assert torch.equal(torch.cat([part["input_ids"] for part in cut]), batch["input_ids"])
    assert torch.equal(torch.cat([part["labels"] for part in cut]), batch["labels"])


class Killed(Exception):
    pass


def test_the_mod_arm_resumes_after_a_kill_as_if_never_stopped(tiny, tmp_path):
    """The routers are saved with the model and the optimizer: a resumed run writes the same metrics."""
    settings = dict(arms=("mod",), drop_layers="1::2", steps=4, eval_every=2, checkpoint_every=2)

    def metrics(root):
        return [{k: v for k, v in json.loads(line).items() if k != "wall_clock_s"}
                for line in (arm_dir(root, "mod", 0) / "metrics.jsonl").read_text().splitlines()]

    def kill(arm, seed, step):
        if step == 3:
            raise Killed

    run_training(tiny(out=str(tmp_path / "whole"), **settings))
    interrupted = tiny(out=str(tmp_path / "cut"), **settings)
    with pytest.raises(Killed):
        run_training(interrupted, on_step=kill)
    run_training(interrupted, resume=True)
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "whole")


def test_the_mod_arm_is_refused_on_the_dit_task_whose_loss_is_outside_the_model():
    with pytest.raises(ConfigError, match="mod arm needs a task whose model returns its loss"):
        resolve(TrainConfig(task="dit", arms=("baseline", "mod")))


def test_quick_vit_trains_the_mod_arm(fashion_dir, cache, tmp_path):
    config = TrainConfig(task="vit", quick=True, fashion_mnist_dir=str(fashion_dir), steps=2, batch_size=4,
                         eval_every=2, eval_batches=1, arms=("mod",), cache_dir=str(cache), out=str(tmp_path / "vit"),
                         progress=False)
    summary = run_training(config)
    assert summary["arms"]["mod"]["final_val_accuracy"] >= 0
