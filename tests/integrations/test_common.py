"""What the integrations share: ensure_applied, check_seed, StepClock, engine_metrics, batch_rows, and the
per-rank apply_on_rank / resume_rank_state of distributed.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import random_ltd
from random_ltd.integrations.common import StepClock, batch_rows, check_seed, engine_metrics, ensure_applied
from random_ltd.integrations.distributed import apply_on_rank, rank_seed, resume_rank_state

SEQ = 16


def encoder() -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)


def test_ensure_applied_applies_once_and_refuses_other_layers():
    model = encoder()
    handle = ensure_applied(model, "1:-1", seed=3)
    assert ensure_applied(model, [1, 2], seed=4) is handle and handle.seed == 3
    with pytest.raises(random_ltd.ConfigError, match="already applied"):
        ensure_applied(model, [1], seed=3)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_check_seed_names_the_field(bad):
    with pytest.raises(random_ltd.ConfigError) as error:
        check_seed(bad, "base_seed")
    assert error.value.field == "base_seed"
    assert check_seed(None) is None and check_seed(0) == 0


def test_step_clock_keeps_one_kept_length_per_engine_step_and_counts_short_steps():
    engine = {"step": 5}  # a resumed engine: the clock follows its count, not its own
    driver = random_ltd.Driver(ensure_applied(encoder(), "1:-1", seed=0),
                               random_ltd.MSLG(SEQ, 2, 2, every_steps=1), batch_size=2, seq_len=SEQ)
    clock = StepClock(driver, lambda: engine["step"])
    kept, closed = [], []
    for micro in range(6):  # two micro-batches per optimizer step
        kept.append(clock.before_forward())
        engine["step"] += micro % 2
        closed.append(clock.after_micro_batch(batch_size=1 if micro == 5 else None))
    assert kept == [12, 12, 14, 14, 16, 16] and closed == [False, True] * 3  # the schedule at steps 5, 6, 7
    assert driver.step == 8
    assert driver.layer_tokens == 2 * (2 * 12 + 2 * SEQ) + 2 * (2 * 14 + 2 * SEQ) + 1 * (4 * SEQ)  # 2 of 4 drop


def test_engine_metrics_leave_the_step_to_the_engine():
    driver = random_ltd.Driver(ensure_applied(encoder(), "1:-1", seed=0),
                               random_ltd.MSLG(SEQ, 2, 2, every_steps=1), batch_size=2, seq_len=SEQ)
    assert engine_metrics(None) == {}
    expected = driver.metrics()
    del expected["random_ltd/step"]
    assert engine_metrics(driver) == expected and "random_ltd/kept_len" in expected


def test_batch_rows_reads_the_first_tensor_or_needs_a_default():
    rows = torch.zeros(3, SEQ)
    assert batch_rows(rows) == batch_rows({"mask": None, "ids": rows}) == batch_rows([None, rows]) == 3
    assert batch_rows("text", default=5) == 5
    with pytest.raises(random_ltd.ConfigError, match="batch_size"):
        batch_rows({"ids": [1, 2]})


def test_apply_on_rank_seeds_each_rank_and_resume_keeps_todays_schedule_and_the_rank_seed():
    handle = apply_on_rank(encoder(), "1:-1", base_seed=7, rank=2)
    assert handle.seed == rank_seed(7, 2)
    saved = random_ltd.Driver(apply_on_rank(encoder(), "1:-1", base_seed=7, rank=0),
                              random_ltd.MSLG(SEQ, 2, 2, every_steps=1), batch_size=2, seq_len=SEQ)
    saved.before_step(0)
    saved.after_step()
    today = random_ltd.MSLG(SEQ, 4, 2, every_steps=1)
    driver = random_ltd.Driver(handle, today, batch_size=2, seq_len=SEQ)
    todays_state = driver.schedule.state_dict()  # bound to the run; start=4, not the saved 2
    resume_rank_state(driver, saved.state_dict())
    assert driver.step == 1 and driver.layer_tokens == saved.layer_tokens
    assert driver.schedule.state_dict() == todays_state and handle.seed == rank_seed(7, 2)
