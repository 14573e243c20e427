"""RandomLTDCallback in a real RandomLTDTrainer (and a plain Trainer) on a tiny GPT-2 (CPU, a few steps each)."""
from __future__ import annotations

import warnings

import pytest
import torch
import transformers

import random_ltd
from random_ltd.integrations.hf import RandomLTDCallback, RandomLTDTrainer, RandomLTDTrainerMixin
from random_ltd.layer import RandomLTDLayerMixin

SEQ, VOCAB, BATCH, LAYERS = 32, 101, 4, 4
GROWING = dict(seq_len=SEQ, start=8, increment=8, every_steps=1)  # kept 8, 16, 24, 32 at steps 0..3


class TokenData(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        ids = torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(index))
        return {"input_ids": ids, "labels": ids}


class Recorder(transformers.TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))

    def train_logs(self):
        return [log for log in self.logs if "loss" in log]


def tiny_gpt2() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=LAYERS, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=SEQ,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


def make_trainer(model, out, callbacks, trainer_class=RandomLTDTrainer, **overrides) -> transformers.Trainer:
    settings = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=BATCH, logging_steps=1,
                    report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=1e-2,
                    lr_scheduler_type="linear", seed=0)
    settings.update(overrides)
    return trainer_class(model=model, args=transformers.TrainingArguments(**settings),
                         train_dataset=TokenData(), eval_dataset=TokenData(), callbacks=callbacks)


def record_lengths(model) -> dict[int, list[int]]:
    """Sequence length each layer's attention saw, per forward."""
    seen: dict[int, list[int]] = {i: [] for i in range(LAYERS)}
    for i, layer in enumerate(model.transformer.h):
        layer.attn.register_forward_hook(lambda module, args, out, i=i: seen[i].append(args[0].shape[1]))
    return seen


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def layer_tokens_brute_force(kept_per_step, batch):
    """Each of the 2 middle layers processed kept tokens, the other 2 the full length."""
    return [sum(batch * (2 * SEQ + 2 * kept) for kept in kept_per_step[: i + 1]) for i in range(len(kept_per_step))]


def test_drops_in_middle_layers_per_optimizer_step_and_never_in_evaluation(tmp_path):
    model = tiny_gpt2()
    seen = record_lengths(model)
    trainer = make_trainer(model, tmp_path, [RandomLTDCallback(random_ltd.MSLG(**GROWING))],
                           gradient_accumulation_steps=2)
    trainer.train()
    assert seen[1] == seen[2] == [8, 8, 16, 16, 24, 24, 32, 32]  # 2 micro-batches per optimizer step
    assert seen[0] == seen[3] == [SEQ] * 8
    for lengths in seen.values():
        lengths.clear()
    model.train()  # evaluation must not drop even if the model was left in training mode
    trainer.evaluate()
    assert all(lengths and set(lengths) == {SEQ} for lengths in seen.values())


@pytest.mark.parametrize("ours_first", [True, False])
def test_metrics_reach_callbacks_before_and_after_ours_and_the_log_history(tmp_path, ours_first):
    before, after = Recorder(), Recorder()
    callback = RandomLTDCallback(random_ltd.MSLG(**GROWING))
    callbacks = [callback, after] if ours_first else [before, callback, after]
    trainer = make_trainer(tiny_gpt2(), tmp_path, callbacks)
    trainer.train()
    expected_kept = [8, 16, 24, 32]
    expected_tokens = layer_tokens_brute_force(expected_kept, BATCH)
    history = [log for log in trainer.state.log_history if "loss" in log]
    for logs in ([after.train_logs(), history] + ([] if ours_first else [before.train_logs()])):
        assert [log["random_ltd/kept_len"] for log in logs] == expected_kept
        assert [log["random_ltd/layer_tokens"] for log in logs] == expected_tokens
    summary = trainer.state.log_history[-1]
    assert summary["random_ltd/layer_tokens"] == expected_tokens[-1]


def test_metrics_reach_callbacks_when_ours_is_added_after_construction(tmp_path):
    before = Recorder()
    trainer = make_trainer(tiny_gpt2(), tmp_path, [before], max_steps=2)
    trainer.add_callback(RandomLTDCallback(random_ltd.MSLG(**GROWING)))  # last in the list
    trainer.train()
    assert [log["random_ltd/kept_len"] for log in before.train_logs()] == [8, 16]


class ScaledLossTrainer(RandomLTDTrainerMixin, transformers.Trainer):
    """A user's own Trainer subclass, with the mixin."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        return 0.5 * super().compute_loss(model, inputs, *args, **kwargs)


@pytest.mark.parametrize("trainer_class", [RandomLTDTrainer, ScaledLossTrainer])
def test_the_mixin_overrides_methods_and_patches_no_instance(tmp_path, trainer_class):
    trainer = make_trainer(tiny_gpt2(), tmp_path, [RandomLTDCallback(random_ltd.MSLG(**GROWING), layer_token_lr=True)],
                           trainer_class=trainer_class, max_steps=2)
    trainer.train()
    assert not {"log", "create_scheduler"} & set(vars(trainer))
    assert [log["random_ltd/kept_len"] for log in trainer.state.log_history if "loss" in log] == [8, 16]
    assert isinstance(trainer.lr_scheduler, random_ltd.LayerTokenLR)


def test_a_plain_trainer_gets_the_metrics_in_later_callbacks_and_a_warning(tmp_path):
    after = Recorder()
    trainer = make_trainer(tiny_gpt2(), tmp_path, [RandomLTDCallback(random_ltd.MSLG(**GROWING)), after],
                           trainer_class=transformers.Trainer, max_steps=2)
    with pytest.warns(UserWarning, match="RandomLTDTrainer") as caught:
        trainer.train()
    assert len([w for w in caught if "RandomLTDTrainer" in str(w.message)]) == 1
    assert [log["random_ltd/kept_len"] for log in after.train_logs()] == [8, 16]
    assert not any("random_ltd/kept_len" in log for log in trainer.state.log_history)
    with pytest.raises(random_ltd.ConfigError, match="RandomLTDTrainer"):
        make_trainer(tiny_gpt2(), tmp_path, [RandomLTDCallback(random_ltd.MSLG(**GROWING), layer_token_lr=True)],
                     trainer_class=transformers.Trainer, max_steps=1).train()


def test_a_second_trainer_on_the_same_model_does_not_wrap_twice(tmp_path):
    model = tiny_gpt2()
    make_trainer(model, tmp_path, [RandomLTDCallback(random_ltd.MSLG(**GROWING))], max_steps=1).train()
    handle = random_ltd.get_handle(model)
    seen = record_lengths(model)
    make_trainer(model, tmp_path, [RandomLTDCallback(random_ltd.MSLG(**GROWING))], max_steps=2).train()
    assert random_ltd.get_handle(model) is handle
    mixins = [cls for cls in type(model.transformer.h[1]).__mro__ if cls is RandomLTDLayerMixin]
    assert len(mixins) == 1
    assert seen[1] == [8, 16]  # the second run starts its own schedule
    with pytest.raises(random_ltd.ConfigError, match="already applied"):
        make_trainer(model, tmp_path, [RandomLTDCallback(random_ltd.MSLG(**GROWING), layers="1:2")],
                     max_steps=1).train()


@pytest.mark.parametrize("restore_callbacks", [False, True])
def test_resume_from_checkpoint_continues_exactly(tmp_path, restore_callbacks):
    def run(out, **overrides):
        model = tiny_gpt2()
        seen = record_lengths(model)
        recorder = Recorder()
        callback = RandomLTDCallback(random_ltd.MSLG(**GROWING), layer_token_lr=True)
        trainer = make_trainer(model, out, [recorder, callback], save_strategy="steps", save_steps=2,
                               restore_callback_states_from_checkpoint=restore_callbacks)
        trainer.train(**overrides)
        return model, seen[1], recorder.train_logs()

    whole, whole_seen, whole_logs = run(tmp_path / "whole")
    resumed, resumed_seen, resumed_logs = run(tmp_path / "whole",
                                              resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    assert whole_seen == [8, 16, 24, 32] and resumed_seen == [24, 32]
    for key in ("random_ltd/kept_len", "random_ltd/layer_tokens", "learning_rate", "loss"):
        assert [log[key] for log in resumed_logs] == pytest.approx([log[key] for log in whole_logs[2:]], rel=1e-6)
    for name, value in parameters(whole).items():
        torch.testing.assert_close(parameters(resumed)[name], value, rtol=1e-5, atol=1e-6)


def test_resume_draws_the_same_indices_as_the_uninterrupted_run(tmp_path):
    """Under a constant kept length, changed draws after resume would change the loss."""
    def run(**overrides):
        recorder = Recorder()
        callback = RandomLTDCallback(random_ltd.ConstantKeep(SEQ, 8))
        trainer = make_trainer(tiny_gpt2(), tmp_path, [recorder, callback], save_strategy="steps", save_steps=2)
        trainer.train(**overrides)
        return [log["loss"] for log in recorder.train_logs()]

    whole = run()
    assert run(resume_from_checkpoint=str(tmp_path / "checkpoint-2")) == pytest.approx(whole[2:], rel=1e-6)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
def test_gradient_checkpointing_trains_identically(tmp_path):
    results = {}
    for checkpointing in (False, True):
        model = tiny_gpt2()
        seen = record_lengths(model)
        callback = RandomLTDCallback(random_ltd.MSLG(**GROWING))
        make_trainer(model, tmp_path, [callback], max_steps=3, gradient_checkpointing=checkpointing).train()
        results[checkpointing] = parameters(model)
        assert seen[1] == ([8, 8, 16, 16, 24, 24] if checkpointing else [8, 16, 24])  # backward recomputes
    for name, value in results[False].items():
        torch.testing.assert_close(results[True][name], value, rtol=1e-5, atol=1e-6)


def test_layer_token_lr_is_the_trainers_linear_schedule_when_nothing_drops(tmp_path):
    def learning_rates(callbacks):
        recorder = Recorder()
        make_trainer(tiny_gpt2(), tmp_path, [recorder, *callbacks], max_steps=6, warmup_steps=2).train()
        return [log["learning_rate"] for log in recorder.train_logs()]

    native = learning_rates([])
    ours = learning_rates([RandomLTDCallback(random_ltd.ConstantKeep(SEQ, SEQ), layer_token_lr=True)])
    assert ours == pytest.approx(native, rel=1e-9, abs=1e-12)
    assert len(set(native)) > 3


def test_layer_token_lr_follows_layer_tokens_while_dropping(tmp_path):
    recorder = Recorder()
    callback = RandomLTDCallback(random_ltd.MSLG(**GROWING), layer_token_lr=True)
    make_trainer(tiny_gpt2(), tmp_path, [recorder, callback], max_steps=6).train()
    kept = [min(8 + 8 * step, SEQ) for step in range(6)]
    consumed = [0] + layer_tokens_brute_force(kept, BATCH)
    expected = [1e-2 * (1 - consumed[step] / consumed[-1]) for step in range(6)]  # linear decay, no warmup
    assert [log["learning_rate"] for log in recorder.train_logs()] == pytest.approx(expected, rel=1e-9)
    iteration_based = [1e-2 * (1 - step / 6) for step in range(6)]
    assert expected[3] > iteration_based[3]  # fewer layer-tokens early: the LR stays higher longer


def test_every_tokens_schedule_counts_the_global_batch(tmp_path):
    recorder = Recorder()
    tokens_per_step = BATCH * 2 * SEQ  # gradient accumulation 2
    schedule = random_ltd.MSLG(seq_len=SEQ, start=8, increment=8, every_tokens=2 * tokens_per_step)
    make_trainer(tiny_gpt2(), tmp_path, [recorder, RandomLTDCallback(schedule)], gradient_accumulation_steps=2).train()
    assert [log["random_ltd/kept_len"] for log in recorder.train_logs()] == [8, 8, 16, 16]


def test_layer_token_lr_refuses_a_scheduler_it_cannot_translate_or_replace(tmp_path):
    callback = RandomLTDCallback(random_ltd.MSLG(**GROWING), layer_token_lr=True)
    with pytest.raises(random_ltd.ConfigError, match="lr_scheduler_type"):
        make_trainer(tiny_gpt2(), tmp_path, [callback], lr_scheduler_type="polynomial").train()
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = transformers.Trainer(model=model, args=make_trainer(model, tmp_path, []).args, train_dataset=TokenData(),
                                   optimizers=(optimizer, scheduler), callbacks=[callback])
    with pytest.raises(random_ltd.ConfigError, match="already has an LR scheduler"):
        trainer.train()


@pytest.mark.parametrize("kwargs, field", [
    (dict(schedule=lambda step: 4), "schedule"),
    (dict(schedule={"type": "Mystery"}), "schedule"),
    (dict(layer_token_lr={"warmup_steps": 3}), "layer_token_lr"),
    (dict(seed=-1), "seed"),
])
def test_invalid_settings_are_refused_at_construction(kwargs, field):
    settings = {"schedule": random_ltd.MSLG(**GROWING), **kwargs}
    with pytest.raises(random_ltd.ConfigError) as error:
        RandomLTDCallback(**settings)
    assert error.value.field == field


def test_state_round_trips_through_the_trainers_rebuild():
    callback = RandomLTDCallback(random_ltd.MSLG(**GROWING), layers=[1, 2], layer_token_lr={"decay": "cosine"}, seed=3)
    saved = callback.state()
    rebuilt = RandomLTDCallback(**saved["args"])
    assert rebuilt.state() == saved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rebuilt.schedule(2) == 24
