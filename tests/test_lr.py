import io
import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, LRScheduler

from random_ltd.lr import LayerTokenLR, lr_factor
from random_ltd.schedules import MSLG, ConfigError

SEQ, BATCH, LAYERS = 64, 4, 6
FULL_STEP = SEQ * BATCH * LAYERS  # layer-tokens of a step that drops nothing


def optimizer(lrs=(0.1,)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups)


def iteration_lr(step, total_steps, warmup_steps, decay, min_ratio):
    """Reference: the usual per-iteration schedule (nanoGPT-style get_lr), independent of lr_factor."""
    if step < warmup_steps:
        return step / warmup_steps
    if decay == "constant":
        return 1.0
    if step >= total_steps:
        return min_ratio
    ratio = (step - warmup_steps) / (total_steps - warmup_steps)
    if decay == "linear":
        return min_ratio + (1 - min_ratio) * (1 - ratio)
    return min_ratio + 0.5 * (1 - min_ratio) * (1 + math.cos(math.pi * ratio))


def run(scheduler, per_step, steps):
    lrs = [scheduler.get_last_lr()[0]]
    for step in range(steps):
        scheduler.optimizer.step()  # the usual order: optimizer first, then the scheduler
        scheduler.step(per_step(step)) if per_step else scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    return lrs


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup_steps", [0, 7])
def test_equals_iteration_schedule_when_nothing_dropped(decay, warmup_steps):
    total_steps = 50
    layer_token = LayerTokenLR(optimizer(), total_steps * FULL_STEP, warmup_steps * FULL_STEP, decay, min_lr_ratio=0.1)
    reference = LambdaLR(optimizer(), lambda it: iteration_lr(it, total_steps, warmup_steps, decay, 0.1))
    assert run(layer_token, lambda _: FULL_STEP, 60) == pytest.approx(run(reference, None, 60), abs=1e-12)


def test_equals_torch_cosine_and_linear_schedulers_without_warmup():
    steps = 40
    cosine = LayerTokenLR(optimizer(), steps * FULL_STEP, decay="cosine", min_lr_ratio=0.2)
    torch_cosine = CosineAnnealingLR(optimizer(), T_max=steps, eta_min=0.02)
    assert run(cosine, lambda _: FULL_STEP, steps) == pytest.approx(run(torch_cosine, None, steps), rel=1e-9)
    linear = LayerTokenLR(optimizer(), steps * FULL_STEP, decay="linear", min_lr_ratio=0.2)
    torch_linear = LinearLR(optimizer(), start_factor=1.0, end_factor=0.2, total_iters=steps)
    assert run(linear, lambda _: FULL_STEP, steps + 5) == pytest.approx(run(torch_linear, None, steps + 5), rel=1e-9)


def test_dropping_keeps_the_lr_higher_for_longer():
    schedule = MSLG(SEQ, 8, 8, every_steps=5)
    per_step = [BATCH * (4 * schedule(t) + 2 * SEQ) for t in range(60)]
    budget = sum(per_step)
    layer_token = run(LayerTokenLR(optimizer(), budget, per_step[0] * 3), lambda t: per_step[t], 60)
    iteration = run(LambdaLR(optimizer(), lambda it: iteration_lr(it, 60, 3, "cosine", 0.0)), None, 60)
    assert all(a >= b - 1e-12 for a, b in zip(layer_token[4:], iteration[4:], strict=True))
    assert layer_token[30] > iteration[30] and layer_token[-1] == pytest.approx(0.0)


def test_factor_boundaries_and_floor():
    assert lr_factor(0, 100, 10) == 0 and lr_factor(5, 100, 10) == 0.5 and lr_factor(10, 100, 10) == 1
    decayed = [lr_factor(c, 100, 10, "cosine", 0.25) for c in range(10, 130)]
    assert decayed == sorted(decayed, reverse=True) and min(decayed) == 0.25 and decayed[-1] == 0.25
    assert lr_factor(55, 100, 10, "linear", 0.0) == pytest.approx(0.5)


def test_per_group_base_lrs_and_scheduler_interface():
    scheduler = LayerTokenLR(optimizer((0.1, 0.01)), 1000, warmup_layer_tokens=100)
    assert isinstance(scheduler, LRScheduler) and scheduler.get_last_lr() == [0.0, 0.0]
    scheduler.optimizer.step()
    scheduler.step(50)
    assert scheduler.get_last_lr() == pytest.approx([0.05, 0.005])
    assert [g["lr"] for g in scheduler.optimizer.param_groups] == pytest.approx([0.05, 0.005])


def test_resume_is_exact_through_torch_save():
    per_step = [FULL_STEP // (1 + t % 3) for t in range(80)]
    straight = LayerTokenLR(optimizer(), sum(per_step), 5 * FULL_STEP, "cosine", 0.1)
    expected = run(straight, lambda t: per_step[t], 80)
    first = LayerTokenLR(optimizer(), sum(per_step), 5 * FULL_STEP, "cosine", 0.1)
    head = run(first, lambda t: per_step[t], 30)
    buffer = io.BytesIO()
    torch.save({"optimizer": first.optimizer.state_dict(), "lr": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    opt = optimizer()
    opt.load_state_dict(saved["optimizer"])
    resumed = LayerTokenLR(opt, 1, 0, "constant")  # settings come back from the state
    resumed.load_state_dict(saved["lr"])
    tail = run(resumed, lambda t: per_step[30 + t], 50)
    assert head + tail[1:] == expected
    assert resumed.consumed_layer_tokens == sum(per_step)


def test_step_without_layer_tokens():
    scheduler = LayerTokenLR(optimizer(), 1000)
    scheduler.optimizer.step()
    with pytest.raises(ConfigError, match="layer_tokens"):
        scheduler.step()
    scheduler = LayerTokenLR(optimizer(), 1000, layer_tokens_per_step=100, decay="linear")
    scheduler.optimizer.step()
    scheduler.step()
    assert scheduler.consumed_layer_tokens == 100 and scheduler.get_last_lr()[0] == pytest.approx(0.09)


@pytest.mark.parametrize("kwargs,field", [
    (dict(total_layer_tokens=0), "total_layer_tokens"),
    (dict(total_layer_tokens=10, warmup_layer_tokens=11), "warmup_layer_tokens"),
    (dict(total_layer_tokens=10, warmup_layer_tokens=-1), "warmup_layer_tokens"),
    (dict(total_layer_tokens=10, decay="exponential"), "decay"),
    (dict(total_layer_tokens=10, min_lr_ratio=1.5), "min_lr_ratio"),
    (dict(total_layer_tokens=10, min_lr_ratio=-0.1), "min_lr_ratio"),
])
def test_bad_settings(kwargs, field):
    with pytest.raises(ConfigError) as caught:
        LayerTokenLR(optimizer(), **kwargs)
    assert caught.value.field == field


def test_negative_layer_tokens_refused():
    scheduler = LayerTokenLR(optimizer(), 100)
    scheduler.optimizer.step()
    with pytest.raises(ConfigError, match="layer_tokens"):
        scheduler.step(-5)
