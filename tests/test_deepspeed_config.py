import json
import math
import warnings

import pytest

import random_ltd
from random_ltd.deepspeed_config import DeepSpeedLinear
from random_ltd.schedules import MSLG, ConfigError


class DeepSpeedReplay:
    """DeepSpeed's random-LTD scheduler as its documentation and config describe it: the current
    value starts at ``min_value``; before each training forward at global step t (from 0) it is
    recomputed while it is below ``max_value``, by floor(t / R * (max - min) + min), rounded
    down to a multiple of ``seq_per_step`` and capped at ``max_value``."""

    def __init__(self, low, high, per_step, require_steps):
        self.low, self.high, self.per_step, self.require_steps = low, high, per_step, require_steps
        self.current = low

    def forward_at(self, step):
        if self.current < self.high:
            value = math.floor(step / self.require_steps * (self.high - self.low) + self.low)
            self.current = min(value - value % self.per_step, self.high)
        return self.current


def ds_config(low=128, high=2048, per_step=16, require_steps=2000, layer_ids=(1, 2, 3, 4, 5, 6), total=8, **extra):
    section = {
        "enabled": True, "total_layer_num": total, "random_ltd_layer_num": len(layer_ids),
        "random_ltd_layer_id": list(layer_ids), "model_mask_name": "attention_mask", "model_type": "decoder",
        "hidden_state_order": "batch_seq_dim",
        "random_ltd_schedule": {"min_value": low, "max_value": high, "schedule_type": "fixed_linear",
                                "schedule_config": {"require_steps": require_steps, "seq_per_step": per_step}},
    }
    section.update(extra)
    return {"train_batch_size": 32,
            "data_efficiency": {"enabled": True, "data_routing": {"enabled": True, "random_ltd": section}}}


def replay(low, high, per_step, require_steps, steps):
    reference = DeepSpeedReplay(low, high, per_step, require_steps)
    return [reference.forward_at(t) for t in range(steps)]


@pytest.mark.parametrize("low,high,per_step,require_steps",
                         [(128, 2048, 16, 2000), (64, 512, 8, 999), (16, 128, 16, 37)])
def test_well_formed_config_matches_deepspeed_step_for_step(low, high, per_step, require_steps):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-formed config warns about nothing
        imported = random_ltd.from_deepspeed_config(ds_config(low, high, per_step, require_steps))
    steps = require_steps + 50
    assert [imported.schedule(t) for t in range(steps)] == replay(low, high, per_step, require_steps, steps)
    assert imported.schedule.full_step == require_steps


def test_float_arithmetic_replayed_where_exact_arithmetic_differs():
    # t / R * (max - min) lands just below an integer at t=3575 in floating point
    imported = DeepSpeedLinear(21, 1126, 1, 4675)
    exact = MSLG(1126, 21, 1, full_at=4675)
    assert imported(3575) == replay(21, 1126, 1, 4675, 3576)[-1] == exact(3575) - 1


@pytest.mark.parametrize("low,high,per_step", [(100, 2040, 16), (100, 2048, 16), (128, 2040, 16)])
def test_defective_config_exact_replays_and_default_repairs(low, high, per_step):
    require_steps = 1000
    reference = replay(low, high, per_step, require_steps, 1100)
    exact = DeepSpeedLinear(low, high, per_step, require_steps, exact=True)
    assert [exact(t) for t in range(1100)] == reference
    with pytest.warns(UserWarning, match="DeepSpeed"):
        repaired = random_ltd.from_deepspeed_config(ds_config(low, high, per_step, require_steps)).schedule
    values = [repaired(t) for t in range(1100)]
    assert min(values) == low and values == sorted(values)
    assert values[require_steps] == high and values[require_steps - 1] < high
    assert values[:require_steps] == [max(low, v) for v in reference[:require_steps]]
    assert repaired.defects() and len(exact.defects()) == len(repaired.defects())


def test_sources_whole_config_section_and_json_file(tmp_path):
    whole = ds_config(layer_ids=(3, 1, 2), total=5)
    section = whole["data_efficiency"]["data_routing"]["random_ltd"]
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(whole))
    for source in (whole, section, {"random_ltd": section}, path, str(path)):
        imported = random_ltd.from_deepspeed_config(source)
        assert imported.layer_ids == [1, 2, 3] and imported.num_layers == 5
        assert imported.schedule.state_dict() == DeepSpeedLinear(128, 2048, 16, 2000).state_dict()
    assert random_ltd.from_deepspeed_config(whole).batch_size == 32
    assert random_ltd.from_deepspeed_config(section).batch_size is None


def test_state_dict_round_trip():
    original = DeepSpeedLinear(100, 2040, 16, 1000, exact=True)
    copy = DeepSpeedLinear(8, 16, 8, 10)
    copy.load_state_dict(original.state_dict())
    assert [copy(t) for t in range(0, 1200, 3)] == [original(t) for t in range(0, 1200, 3)]


def without(config, *path):
    section = config["data_efficiency"]["data_routing"]["random_ltd"]
    for key in path[:-1]:
        section = section[key]
    del section[path[-1]]
    return config


@pytest.mark.parametrize("config,field", [
    (ds_config(random_ltd_schedule={"min_value": 1, "max_value": 8, "schedule_type": "fixed_root",
                                    "schedule_config": {"require_steps": 5, "seq_per_step": 1}}), "schedule_type"),
    (without(ds_config(), "total_layer_num"), "total_layer_num"),
    (without(ds_config(), "random_ltd_layer_id"), "random_ltd_layer_id"),
    (without(ds_config(), "random_ltd_layer_num"), "random_ltd_layer_num"),
    (without(ds_config(), "random_ltd_schedule"), "random_ltd_schedule"),
    (without(ds_config(), "random_ltd_schedule", "min_value"), "min_value"),
    (without(ds_config(), "random_ltd_schedule", "schedule_config", "require_steps"), "require_steps"),
    (without(ds_config(), "random_ltd_schedule", "schedule_config", "seq_per_step"), "seq_per_step"),
    (ds_config(random_ltd_layer_num=5), "random_ltd_layer_num"),
    (ds_config(layer_ids=(1, 8), total=8), "random_ltd_layer_id"),
    (ds_config(layer_ids=(1, 1), total=8), "random_ltd_layer_id"),
    (ds_config(low=4096), "min_value"),
    (ds_config(require_steps=0), "require_steps"),
    ({"data_efficiency": {"data_routing": {}}}, "data_efficiency.data_routing.random_ltd"),
    ({"train_batch_size": 8}, "random_ltd"),
])
def test_bad_configs_name_the_key(config, field):
    with pytest.raises(ConfigError) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        random_ltd.from_deepspeed_config(config)
    assert caught.value.field == field


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        random_ltd.from_deepspeed_config(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        random_ltd.from_deepspeed_config(broken)


def test_exact_mode_refuses_a_zero_length_start():
    with pytest.raises(ConfigError, match="min_value"):
        DeepSpeedLinear(8, 64, 16, 10, exact=True)
    assert DeepSpeedLinear(8, 64, 16, 10)(0) == 8


def test_disabled_section_warns():
    with pytest.warns(UserWarning, match="enabled is false"):
        random_ltd.from_deepspeed_config(ds_config(enabled=False))
