"""DeepSpeed: config splitting, layer selection, the LayerToken LR and the engine clock.

A real engine (2 CPU processes) runs the README command: test_readme_integrations.py.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from launching import REPO

import random_ltd
from random_ltd.integrations.deepspeed import EngineClock, apply_from_config, layer_token_lr, split_config

CONFIG_PATH = REPO / "examples" / "deepspeed_config.json"


def example_config() -> dict:
    return json.loads(CONFIG_PATH.read_text())


def gpt2(layers: int = 6) -> transformers.GPT2LMHeadModel:
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=layers, n_embd=16, n_head=2, vocab_size=50))


def test_split_config_switches_deepspeeds_random_ltd_off_and_keeps_the_rest():
    config = example_config()
    original = copy.deepcopy(config)
    settings, for_deepspeed = split_config(config)
    assert config == original  # not mutated
    section = for_deepspeed["data_efficiency"]["data_routing"]["random_ltd"]
    assert section["enabled"] is False
    section["enabled"] = True
    assert for_deepspeed == original
    assert settings.layer_ids == [1, 2, 3, 4] and settings.num_layers == 6 and settings.seq_len == 128
    assert split_config(CONFIG_PATH)[1] == split_config(config)[1]


def test_split_config_needs_the_whole_config():
    section = example_config()["data_efficiency"]["data_routing"]
    with pytest.raises(random_ltd.ConfigError) as error:
        split_config(section)
    assert error.value.field == "data_efficiency"


def test_apply_from_config_wraps_the_configured_layers_with_a_rank_seed():
    settings, _ = split_config(example_config())
    handles = [apply_from_config(gpt2(), settings, seed=5, rank=rank) for rank in (0, 1)]
    assert [h.drop_layers for h in handles] == [[1, 2, 3, 4]] * 2
    assert handles[0].seed != handles[1].seed


def test_apply_from_config_refuses_a_model_of_another_depth_and_leaves_it_unwrapped():
    settings, _ = split_config(example_config())
    model = gpt2(layers=8)
    with pytest.raises(random_ltd.ConfigError) as error:
        apply_from_config(model, settings, seed=5, rank=0)
    assert error.value.field == "total_layer_num"
    assert random_ltd.get_handle(model) is None


def test_layer_token_lr_warms_up_then_decays_linearly_over_the_configured_tokens():
    settings, _ = split_config(example_config())
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = layer_token_lr(optimizer, settings)
    total, warmup = 101376, 6144
    consumed = 0
    for tokens in (1000, 3000, 2144, 50000, 48232, 5000):
        optimizer.step()
        scheduler.step(tokens)
        consumed += tokens
        expected = consumed / warmup if consumed < warmup else max(0.0, 1 - (consumed - warmup) / (total - warmup))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_layer_token_lr_is_none_when_disabled_and_refuses_other_warmups():
    config = example_config()
    lr_section = config["data_efficiency"]["data_routing"]["random_ltd"]["layer_token_lr_schedule"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lr_section["enabled"] = False
    assert layer_token_lr(optimizer, split_config(config)[0]) is None
    lr_section.update(enabled=True, warmup_type="log")
    with pytest.raises(random_ltd.ConfigError, match="linear warmup"):
        layer_token_lr(optimizer, split_config(config)[0])


class FakeEngine:
    """Steps its optimizer every ``accumulation`` calls of ``step()``, like a DeepSpeed engine."""

    def __init__(self, accumulation: int):
        self.accumulation, self.micro_steps, self.global_steps = accumulation, 0, 0

    def step(self):
        self.micro_steps += 1
        if self.micro_steps % self.accumulation == 0:
            self.global_steps += 1


def test_engine_clock_keeps_one_kept_length_per_optimizer_step():
    settings, _ = split_config(example_config())
    model = gpt2()
    handle = apply_from_config(model, settings, seed=1, rank=0)
    driver = random_ltd.Driver(handle, settings.schedule, batch_size=8, seq_len=settings.seq_len)
    engine = FakeEngine(accumulation=3)
    clock = EngineClock(engine, driver)
    kept, closed = [], []
    for _ in range(12):
        kept.append(clock.before_forward())
        assert handle.keep == (kept[-1] if kept[-1] < settings.seq_len else None)
        engine.step()
        closed.append(clock.after_engine_step())
    expected = [settings.schedule(step) for step in range(4)]
    assert kept == [k for k in expected for _ in range(3)]
    assert closed == [False, False, True] * 4
    assert driver.step == 4
    assert driver.layer_tokens == random_ltd.total_layer_tokens(settings.schedule, 4, batch_size=8, num_layers=6,
                                                                drop_layers=settings.layer_ids)

