import pytest
import torch

from random_ltd.accounting import layer_tokens_per_step
from random_ltd.schedules import ConstantKeep
from random_ltd.train.arms import make_lr_scheduler, plan_arms
from random_ltd.train.config import ConfigError, TrainConfig
from random_ltd.train.tasks import ModelShape, resolve_config

SHAPE = ModelShape(num_layers=6, hidden=64, seq_len=128, ffn_hidden=256, vocab_size=512)


def plans(**changes):
    settings = dict(steps=100, batch_size=4, seq_len=128, kept_start=16, kept_increment=8, full_at=0.7)
    return plan_arms(resolve_config(TrainConfig(**{**settings, **changes})), SHAPE)


def brute_force_layer_tokens(plan, batch_size=4):
    return sum(layer_tokens_per_step(128, batch_size, 6, list(plan.drop_layers), plan.schedule(step))
               for step in range(plan.steps))


def test_baseline_runs_the_budget_at_full_length():
    baseline = plans()["baseline"]
    assert baseline.steps == 100 and not baseline.drops and baseline.lr_clock == "steps"
    assert baseline.layer_tokens == 100 * 4 * 128 * 6


def test_random_ltd_same_steps_fewer_layer_tokens_than_the_baseline():
    ltd = plans()["random_ltd"]
    assert ltd.steps == 100 and ltd.drop_layers == (1, 2, 3, 4) and ltd.lr_clock == "layer_tokens"
    assert ltd.schedule(0) == 16 and ltd.schedule(70) == 128 and ltd.schedule(69) < 128
    assert ltd.layer_tokens == brute_force_layer_tokens(ltd) < plans()["baseline"].layer_tokens


@pytest.mark.parametrize("ratio", [2 / 3, 1.0, 1.25])
def test_budget_ratio_gives_the_fewest_steps_that_reach_the_budget(ratio):
    arms = plans(budget_ratio=ratio)
    target = ratio * arms["baseline"].layer_tokens
    ltd = arms["random_ltd"]
    assert ltd.layer_tokens >= target
    fewer = plan_arms(resolve_config(TrainConfig(steps=ltd.steps - 1, batch_size=4, seq_len=128, kept_start=16,
                                                 kept_increment=8, full_at=0.7)), SHAPE)["random_ltd"]
    assert fewer.layer_tokens < target  # one step less would not reach it


def test_constant_schedule_and_explicit_interval():
    constant = plans(schedule="constant", kept_start=32)["random_ltd"]
    assert isinstance(constant.schedule, ConstantKeep) and constant.schedule(99) == 32
    stepped = plans(kept_every=10, full_at=None)["random_ltd"]
    assert [stepped.schedule(s) for s in (0, 9, 10, 20)] == [16, 16, 24, 32]


def test_arms_and_layer_selection():
    assert list(plans(arms=("random_ltd",))) == ["random_ltd"]
    assert plans(drop_layers="2,3")["random_ltd"].drop_layers == (2, 3)
    with pytest.raises(ConfigError, match="--drop-layers"):
        plans(drop_layers="9")


def test_layer_token_lr_equals_the_iteration_lr_when_nothing_drops():
    arms = plans(kept_start=128, warmup=0.1)
    optimizers = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0) for _ in range(2)]
    schedulers = [make_lr_scheduler(opt, TrainConfig(), arms[arm]) for opt, arm in zip(optimizers, arms, strict=True)]
    per_step = 4 * 128 * 6
    seen = set()
    for _ in range(100):
        assert optimizers[0].param_groups[0]["lr"] == optimizers[1].param_groups[0]["lr"]
        seen.add(optimizers[0].param_groups[0]["lr"])
        for optimizer in optimizers:
            optimizer.step()
        schedulers[0].step()
        schedulers[1].step(per_step)
    assert len(seen) > 50  # warmup and decay, not a constant
