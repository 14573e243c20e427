import math

import pytest

import random_ltd
from random_ltd.accounting import flops_per_step, layer_tokens_per_step, mod_flops_per_step, mod_layer_tokens_per_step
from random_ltd.planner import FlopModel, Training, build_mod_plan, build_plan, lr_curves, solve_for_saving
from random_ltd.schedules import MSLG, ConfigError, ConstantKeep

SMALL = Training(seq_len=128, num_layers=6, batch_size=4, total_steps=400, flop_model=FlopModel(64, vocab_size=50))


def stepwise(schedule, training):
    """Reference totals: every step, one at a time."""
    drop = list(range(1, training.num_layers - 1))
    model = training.flop_model
    steps = range(training.steps)
    tokens = [layer_tokens_per_step(training.seq_len, training.batch_size, training.num_layers, drop, schedule(t))
              for t in steps]
    flops = sum(flops_per_step(training.seq_len, training.batch_size, training.num_layers, model.d_model,
                               kept=schedule(t), drop_layers=drop, vocab_size=model.vocab_size) for t in steps)
    return tokens, flops


@pytest.mark.parametrize("schedule", [MSLG(128, 16, 16, every_steps=37), MSLG(128, 10, 16, full_at=0.5),
                                      ConstantKeep(128, 48)], ids=repr)
def test_plan_totals_equal_step_by_step(schedule):
    plan = build_plan(schedule, SMALL)
    tokens, flops = stepwise(plan.schedule, SMALL)
    assert plan.random_ltd_layer_tokens == sum(tokens) and plan.random_ltd_flops == flops
    assert plan.baseline_layer_tokens == 400 * 4 * 128 * 6
    assert plan.layer_token_saving == pytest.approx(1 - sum(tokens) / plan.baseline_layer_tokens)
    assert [plan.layer_tokens_before(t) for t in (0, 1, 37, 200, 399, 400)] == \
        [sum(tokens[:t]) for t in (0, 1, 37, 200, 399, 400)]


def test_constant_keep_saving_is_the_drop_fraction():
    plan = build_plan(ConstantKeep(128, 32), SMALL)
    assert plan.layer_token_saving == pytest.approx(4 / 6 * (1 - 32 / 128))
    assert plan.full_length_step is None and plan.change_points == [(0, 32)]


def test_json_keys_and_schedule_points():
    plan = build_plan(MSLG(128, 16, 16, every_steps=37), SMALL)
    data = plan.to_json()
    assert {"layer_token_saving", "flop_saving", "baseline_layer_tokens", "random_ltd_layer_tokens", "drop_layers",
            "schedule"} <= set(data)
    assert data["drop_layers"] == [1, 2, 3, 4]
    assert data["schedule"][0] == {"step": 0, "kept": 16}
    assert [p["step"] for p in data["schedule"]] == [37 * i for i in range(8)]
    assert data["schedule"][-1]["kept"] == 128 and data["full_length_step"] == 259


def test_total_tokens_round_up_to_whole_steps():
    training = Training(seq_len=128, num_layers=6, batch_size=4, total_tokens=512 * 10 + 1)
    assert training.steps == 11 and training.total_field == "total_tokens"


def test_paper_gpt_saving_is_close_to_the_linear_growth_estimate():
    training = Training(seq_len=2048, num_layers=24, batch_size=256, total_tokens=300e9)
    plan = build_plan(MSLG(2048, 128, 16, every_tokens=1.75e9), training)
    growth = plan.full_length_step / plan.total_steps  # 210B of 300B tokens
    assert growth == pytest.approx(0.7, abs=1e-3)
    estimate = 22 / 24 * growth * (2048 - 128) / (2 * 2048)  # mean kept over the growth phase, minus half a step
    assert plan.layer_token_saving == pytest.approx(estimate, abs=0.005)
    assert plan.flop_saving > plan.layer_token_saving


@pytest.mark.parametrize("schedule,training,field", [
    (MSLG(128, 16, 16, every_steps=100), SMALL, "total_steps"),
    (MSLG(128, 16, 16, every_steps=100), Training(seq_len=128, num_layers=6, batch_size=4, total_tokens=5e4),
     "total_tokens"),
    (MSLG(128, 16, 16, full_at=401), SMALL, "full_at"),
    (MSLG(64, 16, 16, every_steps=1), SMALL, "seq_len"),
])
def test_schedule_longer_than_training_is_an_error(schedule, training, field):
    with pytest.raises(ConfigError) as caught:
        build_plan(schedule, training)
    assert caught.value.field == field
    if field != "seq_len":
        assert build_plan(schedule, training, require_full=False).full_length_step is None


@pytest.mark.parametrize("kwargs,field", [
    (dict(total_steps=10, total_tokens=100), "total_steps"),
    (dict(), "total_steps"),
    (dict(total_steps=0), "total_steps"),
    (dict(total_tokens=-1.0), "total_tokens"),
    (dict(total_steps=10, drop_layers="7:9"), "drop_layers"),
    (dict(total_steps=10, drop_layers="a:b"), "drop_layers"),
    (dict(total_steps=10, batch_size=0), "batch_size"),
])
def test_training_validation(kwargs, field):
    settings = dict(seq_len=128, num_layers=6, batch_size=4) | kwargs
    with pytest.raises(ConfigError) as caught:
        Training(**settings)
    assert caught.value.field == field


@pytest.mark.parametrize("target", [0.1, 0.2, 0.3])
def test_solve_interval_is_the_smallest_reaching_the_target(target):
    plan = solve_for_saving(target, SMALL, increment=16, start=16)
    every = plan.schedule.every_steps
    assert plan.layer_token_saving >= target
    shorter = build_plan(MSLG(128, 16, 16, every_steps=every - 1), SMALL).layer_token_saving if every > 1 else 0
    assert shorter < target


@pytest.mark.parametrize("target", [0.05, 0.15, 0.2])
def test_solve_start_is_the_largest_reaching_the_target(target):
    plan = solve_for_saving(target, SMALL, increment=16, multiple_of=8)
    start = plan.schedule.start
    assert plan.layer_token_saving >= target and plan.schedule.full_at == 0.7 and start % 8 == 0
    larger = build_plan(MSLG(128, start + 8, 16, full_at=0.7, multiple_of=8), SMALL).layer_token_saving
    assert larger < target


@pytest.mark.parametrize("target,kwargs", [
    (0.6, dict(start=16)), (0.6, dict()), (0.1, dict(start=16, full_at=0.5)), (1.2, dict()), (0, dict()),
    (0.1, dict(start=128)),
])
def test_unreachable_or_ambiguous_targets(target, kwargs):
    with pytest.raises(ConfigError) as caught:
        solve_for_saving(target, SMALL, increment=16, **kwargs)
    assert caught.value.field == "target_saving"


def test_lr_curves_show_the_layer_token_clock_running_slower_during_growth():
    plan = build_plan(MSLG(128, 16, 16, full_at=0.5), SMALL)
    curves = lr_curves(plan, points=50, min_lr_ratio=0.1)
    assert curves["step"][0] == 0 and curves["step"][-1] == 399
    assert curves["kept"] == [plan.schedule(t) for t in curves["step"]]
    assert all(a >= b for a, b in zip(curves["layer_token_lr"], curves["iteration_lr"], strict=True))
    assert curves["layer_token_lr"][25] > curves["iteration_lr"][25]
    assert curves["layer_token_lr"][-1] == pytest.approx(0.1, abs=0.01)
    assert math.isclose(curves["layer_token_lr"][0], 1.0)


def mod_stepwise(capacity, training, routed):
    """Reference Mixture-of-Depths totals: every step, one at a time, over the routed layers given."""
    model = training.flop_model
    shape = (training.seq_len, training.batch_size, training.num_layers)
    tokens = [mod_layer_tokens_per_step(*shape, routed, capacity) for _ in range(training.steps)]
    flops = sum(mod_flops_per_step(*shape, model.d_model, routed_layers=routed, capacity=capacity,
                                   ffn_dim=model.ffn, vocab_size=model.vocab_size) for _ in range(training.steps))
    return tokens, flops


@pytest.mark.parametrize("capacity, drop_layers, routed, routed_length", [
    (0.125, "1:-1", [1, 2, 3, 4], 16),
    (0.125, "1:-1:2", [1, 3], 16),  # every other block, the paper's best setting
    (0.29, "::2", [0, 2, 4], 37),
    (40, "2,3", [2, 3], 40),
])
def test_mod_plan_totals_equal_step_by_step(capacity, drop_layers, routed, routed_length):
    training = Training(seq_len=128, num_layers=6, batch_size=4, total_steps=400, drop_layers=drop_layers,
                        flop_model=FlopModel(64, ffn_dim=200, vocab_size=50))
    plan = build_mod_plan(capacity, training)
    tokens, flops = mod_stepwise(capacity, training, routed)
    assert plan.method == "mod" and plan.capacity == capacity and plan.drop_layers == routed
    assert plan.layer_tokens == sum(tokens) and plan.flops == flops
    assert plan.layer_tokens == 400 * 4 * (len(routed) * routed_length + (6 - len(routed)) * 128)
    assert plan.change_points == [(0, routed_length)] and plan.schedule(399) == routed_length
    assert plan.baseline_layer_tokens == 400 * 4 * 128 * 6
    assert plan.baseline_flops == build_plan(random_ltd.ConstantKeep(128, 128), training).baseline_flops
    assert plan.layer_token_saving == pytest.approx(1 - sum(tokens) / plan.baseline_layer_tokens)
    assert plan.flop_saving == pytest.approx(1 - flops / plan.baseline_flops)
    assert [plan.layer_tokens_before(t) for t in (0, 1, 250, 400)] == [sum(tokens[:t]) for t in (0, 1, 250, 400)]


def test_mod_plan_at_full_capacity_saves_no_layer_tokens_and_pays_for_its_routers():
    plan = build_mod_plan(1.0, SMALL)
    assert plan.layer_tokens == plan.baseline_layer_tokens and plan.layer_token_saving == 0.0
    routers = 400 * 3 * 4 * 4 * (2 * 128 * 64)  # steps, backward x3, batch, routed layers, 2 s d each
    assert plan.flops == plan.baseline_flops + routers
    assert -0.01 < plan.flop_saving < 0


def test_mod_plan_costs_a_random_ltd_plan_at_its_routed_length_plus_its_routers():
    mod_plan, ltd_plan = build_mod_plan(0.25, SMALL), build_plan(random_ltd.ConstantKeep(128, 32), SMALL)
    assert mod_plan.layer_tokens == ltd_plan.layer_tokens
    assert mod_plan.flops - ltd_plan.flops == 400 * 3 * 4 * 4 * (2 * 128 * 64)
    assert ltd_plan.method == "random_ltd" and ltd_plan.capacity is None
    assert (ltd_plan.random_ltd_layer_tokens, ltd_plan.random_ltd_flops) == (ltd_plan.layer_tokens, ltd_plan.flops)
    with pytest.raises(random_ltd.RandomLTDError, match="no random-LTD totals"):
        _ = mod_plan.random_ltd_layer_tokens


def test_mod_json_names_the_method_s_totals():
    data = build_mod_plan(0.125, SMALL).to_json()
    assert data["method"] == "mod" and data["mod_capacity"] == 0.125 and data["routed_length"] == 16
    assert data["mod_layer_tokens"] == 400 * 4 * (4 * 16 + 2 * 128)
    assert data["mod_flops"] == mod_stepwise(0.125, SMALL, [1, 2, 3, 4])[1]
    assert data["drop_layers"] == [1, 2, 3, 4] and data["schedule"] == [{"step": 0, "kept": 16}]
    assert {"layer_token_saving", "flop_saving", "baseline_layer_tokens", "baseline_flops"} <= set(data)
    assert not {"random_ltd_layer_tokens", "random_ltd_flops"} & set(data)


def test_random_ltd_json_keeps_its_keys_and_gains_only_the_method():
    data = build_plan(MSLG(128, 16, 16, every_steps=37), SMALL).to_json()
    assert set(data) == {"method", "seq_len", "num_layers", "drop_layers", "batch_size", "tokens_per_step",
                         "total_steps", "total_tokens", "schedule_config", "schedule", "full_length_step",
                         "baseline_layer_tokens", "random_ltd_layer_tokens", "layer_token_saving", "baseline_flops",
                         "random_ltd_flops", "flop_saving", "flop_model"}
    assert data["method"] == "random_ltd"


@pytest.mark.parametrize("capacity", [0, 0.0, 1.5, -0.5, 1, -2, True, float("nan"), "0.5", None])
def test_mod_plan_refuses_a_bad_capacity_naming_it(capacity):
    with pytest.raises(ConfigError) as caught:
        build_mod_plan(capacity, SMALL)
    assert caught.value.field == "mod_capacity"


def test_mod_lr_curves_follow_the_iteration_lr_at_a_constant_length():
    plan = build_mod_plan(0.25, SMALL)
    curves = lr_curves(plan, points=40, min_lr_ratio=0.1)
    assert set(curves["kept"]) == {32}
    assert curves["layer_token_lr"] == pytest.approx(curves["iteration_lr"])


def test_build_mod_plan_is_exported():
    assert random_ltd.build_mod_plan is build_mod_plan and "build_mod_plan" in random_ltd.__all__
