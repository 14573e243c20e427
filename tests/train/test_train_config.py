import pytest

from random_ltd.train.config import ConfigError, TrainConfig
from random_ltd.train.tasks import budget_steps, resolve_config


@pytest.mark.parametrize("changes, flag", [
    (dict(task="gpt3"), "--task"),
    (dict(steps=0), "--steps"),
    (dict(steps=10, tokens=1000), "--steps"),
    (dict(batch_size=2.5), "--batch-size"),
    (dict(seq_len=1), "--seq-len"),
    (dict(seeds=0), "--seeds"),
    (dict(arms=("baseline", "dropout")), "--arms"),
    (dict(arms=()), "--arms"),
    (dict(arms=("baseline", "baseline")), "--arms"),
    (dict(model_size="huge"), "--model-size"),
    (dict(schedule="cosine"), "--schedule"),
    (dict(lr_clock="epochs"), "--lr-clock"),
    (dict(dropout=1.0), "--dropout"),
    (dict(warmup=-0.1), "--warmup"),
    (dict(lr=0.0), "--lr"),
    (dict(budget_ratio=0), "--budget-ratio"),
    (dict(full_at=2.5), "--full-at"),
    (dict(full_at=0.5, kept_every=10), "--kept-every"),
    (dict(drop_layers=" "), "--drop-layers"),
    (dict(arm_order="parallel"), "--arm-order"),
])
def test_bad_values_name_their_flag(changes, flag):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**changes)
    assert str(error.value).startswith(flag + ":")


def test_arms_accept_a_comma_string_and_lists_become_tuples():
    config = TrainConfig(arms="random_ltd", data=["a.txt", "b.txt"])
    assert config.arms == ("random_ltd",) and config.data == ("a.txt", "b.txt")


def test_dict_round_trip_and_differences_ignore_run_control():
    config = TrainConfig(task="bert", steps=7)
    assert TrainConfig.from_dict(config.to_dict()) == config
    moved = config.replace(out="elsewhere", device="cpu", progress=False, checkpoint_every=3, arm_order="sequential")
    assert config.differences(moved) == {}
    assert config.differences(config.replace(lr=0.5)) == {"lr": (None, 0.5)}
    with pytest.raises(ConfigError, match="--colour"):
        TrainConfig.from_dict({**config.to_dict(), "colour": "red"})


@pytest.mark.parametrize("task", ["gpt", "bert", "vit"])
@pytest.mark.parametrize("quick", [False, True])
def test_resolve_fills_every_size_and_keeps_what_was_given(task, quick):
    resolved = resolve_config(TrainConfig(task=task, quick=quick, batch_size=3))
    assert resolved.batch_size == 3
    for name in ("steps", "seq_len", "model_size", "lr", "kept_start", "kept_increment", "full_at",
                 "eval_every", "eval_batches", "checkpoint_every"):
        assert getattr(resolved, name) is not None, name
    assert resolved.checkpoint_every == resolved.eval_every
    assert resolve_config(resolved) == resolved  # resolving is idempotent


def test_vit_length_follows_the_patch_size():
    assert resolve_config(TrainConfig(task="vit")).seq_len == 197  # the paper's ViT length
    assert resolve_config(TrainConfig(task="vit", patch_size=4)).seq_len == 50
    with pytest.raises(ConfigError, match="--seq-len"):
        resolve_config(TrainConfig(task="vit", seq_len=128))
    with pytest.raises(ConfigError, match="--patch-size"):
        resolve_config(TrainConfig(task="vit", patch_size=5))


def test_an_interval_replaces_the_default_full_at_point():
    resolved = resolve_config(TrainConfig(kept_every=5))
    assert resolved.kept_every == 5 and resolved.full_at is None


def test_token_budget_rounds_up_to_whole_steps():
    resolved = resolve_config(TrainConfig(tokens=10_000, batch_size=4, seq_len=64))
    assert resolved.steps is None and budget_steps(resolved) == 40  # 10000 / 256 = 39.06
    assert budget_steps(resolve_config(TrainConfig(steps=9))) == 9


@pytest.mark.parametrize("changes, flag", [
    (dict(seq_len=2048), "--seq-len"),  # GPT-2's 1024 positions
    (dict(task="bert", seq_len=1024), "--seq-len"),  # BERT's 512
    (dict(kept_start=200, seq_len=128), "--kept-start"),
    (dict(task="vit", vocab_size=100), "--vocab-size"),
    (dict(task="vit", data=("x.txt",)), "--data"),
    (dict(task="finetune", vocab_size=100), "--vocab-size"),
    (dict(task="finetune", lora_rank=4), "--lora-rank"),
    (dict(lora=True), "--lora"),
    (dict(kept_start=0), "--kept-start"),
    (dict(kept_increment=0), "--kept-increment"),
])
def test_resolve_rejects_settings_the_task_cannot_take(changes, flag):
    with pytest.raises(ConfigError) as error:
        resolve_config(TrainConfig(**changes))
    assert str(error.value).startswith(flag + ":")
