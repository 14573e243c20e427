"""``random_ltd.integrations.lightning``: a real Lightning 2.x Trainer on a tiny GPT-2, on CPU.

Single process (gradient accumulation, LayerToken LR, logging, exact resume) and Lightning's DDP
strategy over two gloo processes (started by torchrun, which Lightning detects)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

pytest.importorskip("lightning")
import lightning.pytorch as pl  # noqa: E402
from launching import HERE, torchrun  # noqa: E402
from lightning_module import SEQ, TinyGPT, loader, logged, trainer  # noqa: E402

import random_ltd  # noqa: E402
from random_ltd.integrations.lightning import RandomLTDCallback  # noqa: E402
from random_ltd.lr import lr_factor  # noqa: E402

NUM_LAYERS, DROP_LAYERS = 4, [1, 2]


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        yield


def schedule() -> random_ltd.MSLG:
    return random_ltd.MSLG(seq_len=SEQ, start=8, increment=8, every_steps=1)  # 8, 16, 24, then 32 (full)


def layer_tokens(kept: list[int], global_batch: int) -> list[int]:
    """Cumulative layer-tokens after each step, counted layer by layer."""
    per_step = [global_batch * sum(k if layer in DROP_LAYERS else SEQ for layer in range(NUM_LAYERS)) for k in kept]
    return [sum(per_step[: i + 1]) for i in range(len(per_step))]


def test_one_kept_length_per_optimizer_step_with_accumulation_logged_and_layer_token_lr(tmp_path):
    module, steps = TinyGPT(), 6
    callback = RandomLTDCallback(schedule(), layer_token_lr=True)
    fit = trainer(tmp_path, steps, accumulate_grad_batches=2, callbacks=[callback])
    fit.fit(module, loader(16, batch_size=2))  # 4 optimizer steps an epoch: the run crosses an epoch
    assert random_ltd.get_handle(module.model).drop_layers == DROP_LAYERS
    kept = [schedule()(step) for step in range(steps)]
    assert [(r["step"], r["keep"]) for r in module.record] == [
        (step, None if k == SEQ else k) for step, k in enumerate(kept) for _ in range(2)]
    consumed = layer_tokens(kept, global_batch=2 * 2)
    total = consumed[-1]
    assert [r["lr"] for r in module.record[::2]] == pytest.approx(
        [1e-3 * lr_factor(c, total) for c in [0] + consumed[:-1]], rel=1e-12)
    rows = logged(tmp_path)
    assert [row["step"] for row in rows] == list(range(steps))
    assert [row["random_ltd/kept_len"] for row in rows] == kept
    assert [row["random_ltd/layer_tokens"] for row in rows] == consumed
    assert rows[-1]["random_ltd/lr"] == 0.0  # the LayerToken LR ends exactly at the planned budget
    assert random_ltd.get_handle(module.model).keep is None  # training over: a plain transformer again


def resumable_run(root, steps: int, ckpt_path=None) -> TinyGPT:
    module = TinyGPT(dropout=0.1)
    saving = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=4, save_top_k=-1)
    slow = random_ltd.MSLG(seq_len=SEQ, start=4, increment=4, every_steps=1)  # still dropping after the resume
    fit = trainer(root, steps, callbacks=[RandomLTDCallback(slow, layer_token_lr=True), saving])
    fit.fit(module, loader(8, batch_size=2, shuffle=True), ckpt_path=ckpt_path)
    return module


def test_fit_from_a_checkpoint_continues_with_the_same_kept_lengths_lr_and_draws(tmp_path):
    whole = resumable_run(tmp_path / "whole", 8)
    first_epoch = tmp_path / "whole" / "ckpt" / "epoch=0-step=4.ckpt"
    resumed = resumable_run(tmp_path / "resumed", 8, ckpt_path=first_epoch)
    assert [r["step"] for r in resumed.record] == [4, 5, 6, 7]
    assert resumed.record == whole.record[4:]  # kept length, LR and loss (draws, dropout, data) bitwise
    assert logged(tmp_path / "resumed")[-1] == logged(tmp_path / "whole")[-1]
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_without_the_saved_rng_state_the_resumed_draws_differ(tmp_path):
    """The check above can fail: dropping the callback's RNG state from the checkpoint changes the losses."""
    whole = resumable_run(tmp_path / "whole", 8)
    checkpoint = torch.load(tmp_path / "whole" / "ckpt" / "epoch=0-step=4.ckpt", weights_only=False)
    (key,) = [key for key in checkpoint["callbacks"] if key.startswith("RandomLTDCallback")]
    del checkpoint["callbacks"][key]["rng"]
    torch.save(checkpoint, tmp_path / "no_rng.ckpt")
    resumed = resumable_run(tmp_path / "resumed", 8, ckpt_path=tmp_path / "no_rng.ckpt")
    assert [(r["keep"], r["lr"]) for r in resumed.record] == [(r["keep"], r["lr"]) for r in whole.record[4:]]
    assert [r["loss"] for r in resumed.record] != [r["loss"] for r in whole.record[4:]]


def test_bad_settings_are_one_line_errors():
    with pytest.raises(random_ltd.ConfigError, match="schedule"):
        RandomLTDCallback(128)
    with pytest.raises(random_ltd.ConfigError, match="layer_token_lr"):
        RandomLTDCallback(schedule(), layer_token_lr={"peak": 1})


def test_lightning_ddp_with_two_gloo_processes(tmp_path):
    torchrun(HERE / "lightning_ddp_worker.py", str(tmp_path), timeout=240)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    kept = [schedule()(step) for step in range(4)]
    for rank in ranks:
        assert [(r["step"], r["keep"]) for r in rank["record"]] == [(s, None if k == SEQ else k)
                                                                     for s, k in enumerate(kept)]
    assert ranks[0]["seed"] != ranks[1]["seed"]  # each rank draws its own indices
    assert ranks[0]["parameters"] == ranks[1]["parameters"]  # DDP kept the replicas identical
    rows = logged(tmp_path)
    assert [row["random_ltd/kept_len"] for row in rows] == kept
    assert [row["random_ltd/layer_tokens"] for row in rows] == layer_tokens(kept, global_batch=2 * 2)


def test_a_short_accumulation_window_at_the_end_of_an_epoch_counts_the_sequences_it_had(tmp_path):
    module = TinyGPT()
    fit = trainer(tmp_path, 3, accumulate_grad_batches=2, callbacks=[RandomLTDCallback(schedule())])
    fit.fit(module, loader(10, batch_size=2))  # 5 micro-batches an epoch: steps of 2, 2, then 1 micro-batch
    assert [r["step"] for r in module.record] == [0, 0, 1, 1, 2]
    kept = [8, 16, 24]
    per_step = [sequences * sum(k if layer in DROP_LAYERS else SEQ for layer in range(NUM_LAYERS))
                for sequences, k in zip([4, 4, 2], kept, strict=True)]
    assert [row["random_ltd/layer_tokens"] for row in logged(tmp_path)] == [sum(per_step[: i + 1]) for i in range(3)]
    assert logged(tmp_path)[-1]["random_ltd/tokens"] == 10 * SEQ


def test_a_schedule_counted_in_steps_needs_no_max_steps(tmp_path):
    module = TinyGPT()
    fit = trainer(tmp_path, -1, max_epochs=1, callbacks=[RandomLTDCallback(schedule())])  # trained by epochs
    fit.fit(module, loader(8, batch_size=2))
    assert [row["random_ltd/kept_len"] for row in logged(tmp_path)] == [8, 16, 24, 32]
    with pytest.raises(random_ltd.ConfigError, match="total_steps"):  # a fraction of the run does need it
        trainer(tmp_path / "fraction", -1, max_epochs=1, callbacks=[RandomLTDCallback(
            random_ltd.MSLG(seq_len=SEQ, start=8, increment=8, full_at=0.5))]).fit(TinyGPT(), loader(8, batch_size=2))
