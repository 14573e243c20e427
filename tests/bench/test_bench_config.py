"""Bench configuration: invalid values fail at construction, naming the field."""
from __future__ import annotations

import dataclasses

import pytest

from random_ltd.bench.config import BenchConfig, GptShape, RunShape, StackShape, default_config, quick_config

SHAPE = StackShape("s", hidden=64, heads=4, layers=4, seq_len=100, batch=1)


@pytest.mark.parametrize("field, value", [("hidden", 0), ("heads", 3), ("layers", 2), ("seq_len", -1), ("batch", 1.5)])
def test_stack_shape_rejects(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(SHAPE, **{field: value})


def test_keeps_are_rounded_distinct_sorted_and_at_least_one():
    assert SHAPE.keeps((0.75, 0.125, 0.25, 0.5)) == [12, 25, 50, 75]
    assert SHAPE.keeps((0.001, 0.002)) == [1]


@pytest.mark.parametrize("overrides, field", [
    (dict(repeats=0), "repeats"), (dict(warmup=-1), "warmup"), (dict(keep_fractions=(0.5, 1.0)), "keep_fractions"),
    (dict(memory_fractions=()), "memory_fractions"), (dict(sections=("stack", "nope")), "sections"),
    (dict(dtype="fp16"), "dtype"), (dict(threads=0), "threads"),
])
def test_bench_config_rejects(overrides, field):
    with pytest.raises(ValueError, match=field):
        BenchConfig(stack_shapes=(SHAPE,), **overrides)


def test_gpt_and_run_shapes_reject():
    with pytest.raises(ValueError, match="dropout"):
        GptShape(dropout=1.0)
    with pytest.raises(ValueError, match="heads"):
        GptShape(hidden=10, heads=4)
    with pytest.raises(ValueError, match="full_at"):
        RunShape(full_at=1.5)


def test_default_and_quick_configs_are_valid_and_quick_is_small():
    full, quick = default_config(), quick_config()
    assert {shape.hidden for shape in full.stack_shapes} == {768, 256}
    assert all(512 <= shape.seq_len <= 1024 for shape in full.stack_shapes)
    assert quick.quick and not full.quick
    assert max(s.hidden * s.seq_len * s.batch for s in quick.stack_shapes) < 64 * 1024


def test_gpt_shape_matches_the_gpt_task_defaults():
    """The training-step and whole-run sections time the model and schedule the training program uses."""
    tasks = pytest.importorskip("random_ltd.train.tasks")
    from random_ltd.train.config import TrainConfig
    from random_ltd.train.tasks.text import SIZES

    resolved = tasks.resolve_config(TrainConfig(task="gpt"))
    layers, hidden, heads = SIZES[resolved.model_size]
    gpt, run = GptShape(), RunShape()
    assert (gpt.layers, gpt.hidden, gpt.heads) == (resolved.layers or layers, hidden, heads)
    assert (gpt.vocab, gpt.seq_len, gpt.batch, gpt.dropout) == (
        resolved.vocab_size, resolved.seq_len, resolved.batch_size, resolved.dropout)
    assert (run.steps, run.start, run.increment, run.full_at) == (
        resolved.steps, resolved.kept_start, resolved.kept_increment, resolved.full_at)
