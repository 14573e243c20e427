"""``PlanRequest``: the rules of which settings go together, checked on construction, and the plan
it makes against the planner called directly."""
from __future__ import annotations

import json

import pytest

from random_ltd.errors import ConfigError
from random_ltd.plan_request import LRCurves, PlanRequest
from random_ltd.planner import Training, build_mod_plan, build_plan, solve_for_saving
from random_ltd.schedules import MSLG, ConstantKeep

RUN = dict(seq_len=128, num_layers=6, batch_size=4, total_steps=500)


def test_plans_what_the_planner_plans():
    training = Training(128, 6, 4, total_steps=500)
    pairs = [(PlanRequest(**RUN, start=16, every_steps=10), build_plan(MSLG(128, 16, 16, every_steps=10), training)),
             (PlanRequest(**RUN, keep=64), build_plan(ConstantKeep(128, 64), training)),
             (PlanRequest(**RUN, target_saving=0.2, start=16), solve_for_saving(0.2, training, increment=16, start=16)),
             (PlanRequest(**RUN, mod_capacity=0.125), build_mod_plan(0.125, training)),
             (PlanRequest(**RUN, mod_capacity=24, drop_layers="1:-1:2"),
              build_mod_plan(24, Training(128, 6, 4, total_steps=500, drop_layers="1:-1:2")))]
    for request, expected in pairs:
        assert request.plan().to_json() == expected.to_json()


@pytest.mark.parametrize("settings, field", [
    (dict(RUN, seq_len=None, start=16, every_steps=10), "seq_len"),
    (dict(RUN, num_layers=None, start=16, every_steps=10), "num_layers"),
    (dict(RUN, batch_size=None, start=16, every_steps=10), "batch_size"),
    (dict(RUN, total_steps=None, start=16, every_steps=10), "total_steps"),
    (dict(RUN, start=16), "every_steps"),
    (dict(RUN, every_steps=10), "start"),
    (dict(RUN, keep=16, start=8), "start"),
    (dict(RUN, keep=16, every_steps=8), "every_steps"),
    (dict(RUN, target_saving=0.1, keep=8), "keep"),
    (dict(RUN, deepspeed_config="ds.json", start=8), "start"),
    (dict(RUN, deepspeed_config="ds.json", drop_layers="1:3"), "drop_layers"),
    (dict(RUN, total_steps=None, total_tokens=2000, start=16, every_steps=100), "total_tokens"),
    (dict(RUN, mod_capacity=0.0), "mod_capacity"),
    (dict(RUN, mod_capacity=1), "mod_capacity"),
    (dict(RUN, mod_capacity=True), "mod_capacity"),
    (dict(RUN, mod_capacity=0.5, drop_layers="7:9"), "drop_layers"),
    (dict(RUN, mod_capacity=0.5, batch_size=None), "batch_size"),
])
def test_rules_are_checked_on_construction_naming_the_setting(settings, field):
    with pytest.raises(ConfigError) as error:
        PlanRequest(**settings).plan()
    assert error.value.field == field


@pytest.mark.parametrize("other", [dict(start=16), dict(every_steps=10), dict(every_tokens=1e4), dict(full_at=0.5),
                                   dict(keep=32), dict(multiple_of=8), dict(target_saving=0.2),
                                   dict(deepspeed_config="ds.json")])
def test_mod_capacity_refuses_the_schedule_settings_naming_them(other):
    (field, _), = other.items()
    with pytest.raises(ConfigError) as error:
        PlanRequest(**RUN, mod_capacity=0.25, **other)
    assert error.value.field == field and "--mod-capacity" in error.value.message


def test_lr_curves_of_a_mod_plan():
    plan = PlanRequest(**RUN, mod_capacity=0.25).plan()
    curves = LRCurves(decay="linear", min_lr_ratio=0.1).of(plan)
    assert set(curves["kept"]) == {32}, "a constant routed length"
    assert curves["layer_token_lr"] == pytest.approx(curves["iteration_lr"]), "a constant length: the clocks agree"


def test_deepspeed_config_sets_the_schedule_and_its_warnings_are_handed_over(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"data_efficiency": {"data_routing": {"random_ltd": {
        "total_layer_num": 6, "random_ltd_layer_num": 4, "random_ltd_layer_id": [1, 2, 3, 4],
        "model_type": "decoder", "hidden_state_order": "batch_seq_dim",
        "random_ltd_schedule": {"min_value": 100, "max_value": 128, "schedule_type": "fixed_linear",
                                "schedule_config": {"require_steps": 200, "seq_per_step": 16}}}}}}))
    warnings = []
    plan = PlanRequest(deepspeed_config=str(path), batch_size=4, total_steps=500).plan(on_warning=warnings.append)
    assert plan.drop_layers == [1, 2, 3, 4] and plan.seq_len == 128 and warnings
    with pytest.raises(ConfigError) as error:
        PlanRequest(deepspeed_config=str(path), batch_size=4, total_steps=500, num_layers=8).plan(warnings.append)
    assert error.value.field == "num_layers"


def test_lr_curves_are_checked():
    for settings, field in ((dict(warmup_fraction=1.0), "warmup_fraction"), (dict(min_lr_ratio=-0.1), "min_lr_ratio"),
                            (dict(decay="step"), "decay")):
        with pytest.raises(ConfigError) as error:
            LRCurves(**settings)
        assert error.value.field == field
