"""``random-ltd train --task dit``: the DiT task's data, loss, sampler, report and its TREAD arm."""
import json
import warnings

import numpy as np
import pytest
import torch
from train.fakes import write_fashion_mnist

from random_ltd.train import TrainConfig, run_training, tread
from random_ltd.train.arms import plan_arms
from random_ltd.train.config import ConfigError, resolve
from random_ltd.train.tasks import dit, make_task

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    # enough test images for the validation batches and the two FID sets of --quick
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), train=256, test=160)


def dit_config(fashion, tmp_path, **changes) -> TrainConfig:
    settings = dict(task="dit", quick=True, steps=2, batch_size=4, eval_batches=1, eval_every=2, layers=3,
                    fashion_mnist_dir=str(fashion), cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"),
                    progress=False, arm_order="sequential")
    return TrainConfig(**{**settings, **changes})


def prepared(config: TrainConfig):
    task = make_task(resolve(config))
    task.prepare()
    return task


def test_image_tokens_follow_the_patch_size_without_a_cls_token(fashion, tmp_path):
    assert resolve(dit_config(fashion, tmp_path, patch_size=2)).seq_len == 196
    assert resolve(dit_config(fashion, tmp_path)).seq_len == 49  # --quick: patch 4
    with pytest.raises(ConfigError, match="--data"):
        resolve(dit_config(fashion, tmp_path, data=("x.txt",)))


def test_batches_are_pure_functions_of_seed_and_step(fashion, tmp_path):
    task = prepared(dit_config(fashion, tmp_path))
    first = task.train_batch(0, 3)
    torch.manual_seed(123)  # the global stream plays no part
    again = task.train_batch(0, 3)
    for name in first:
        assert torch.equal(first[name], again[name])
    assert not torch.equal(first["noise"], task.train_batch(0, 4)["noise"])
    assert not torch.equal(first["noise"], task.train_batch(1, 3)["noise"])
    assert first["pixels"].min() >= -1 and first["pixels"].max() <= 1


def test_validation_is_fixed_and_each_level_is_the_loss_at_that_level(fashion, tmp_path):
    config = dit_config(fashion, tmp_path)
    task, other = prepared(config), prepared(config)
    batches = task.val_batches()
    for mine, theirs in zip(batches, other.val_batches(), strict=True):
        for name in mine:
            assert torch.equal(mine[name], theirs[name])
    torch.manual_seed(0)
    model = task.build_model().eval()
    values = task.evaluate(model, batches)
    for level in dit.VAL_LEVELS:
        chosen = [batch for batch in batches if abs(float(batch["t"][0]) - level) < 1e-6]
        with torch.no_grad():
            direct = np.mean([float(dit.flow_loss(model, **batch)) for batch in chosen])
        assert values[f"val_loss_t{level}"] == pytest.approx(direct, rel=1e-6)
    assert values["val_loss"] == pytest.approx(np.mean([values[f"val_loss_t{x}"] for x in dit.VAL_LEVELS]))


class ExactVelocity(torch.nn.Module):
    """The true rectified-flow velocity towards a fixed image ``target``: (x_t - x0) / t."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, noisy, timestep, class_labels):
        t = (timestep / 1000)[:, None, None, None]
        return type("Output", (), {"sample": (noisy - self.target) / t})()


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_euler_sampler_follows_a_straight_flow_to_its_image(steps):
    target = torch.rand(4, 1, 28, 28) * 1.8 - 0.9
    noise = torch.randn(4, 1, 28, 28)
    sampled = dit.euler_sample(ExactVelocity(target), noise, torch.arange(4), steps)
    torch.testing.assert_close(sampled, target, rtol=0, atol=1e-5)


def test_quick_run_reports_the_fid_proxy_and_sample_grids(fashion, tmp_path):
    summary = run_training(dit_config(fashion, tmp_path))
    root = tmp_path / "run"
    for arm in ("baseline", "random_ltd"):
        result = summary["arms"][arm]
        last = [json.loads(line) for line in (root / arm / "seed0" / "metrics.jsonl").read_text().splitlines()][-1]
        assert result["final_val_loss"] == last["val_loss"]
        assert result["final_fid_proxy"] > 0 and "final_val_perplexity" not in result
        grid = (root / arm / "seed0" / "samples.png")
        from PIL import Image

        assert Image.open(grid).size == (10 * 28, dit.GRID_ROWS * 28)
    assert list((tmp_path / "cache").glob("fid-classifier-*.pt"))  # trained once, cached
    report = (root / "report.md").read_text()
    assert "FID (classifier proxy)" in report and "not Inception FID" in report
    assert "baseline/seed0/samples.png" in report
    ltd, base = summary["arms"]["random_ltd"], summary["arms"]["baseline"]
    assert (f"random_ltd val loss {ltd['final_val_loss'] - base['final_val_loss']:+.4f}, FID proxy "
            f"{ltd['final_fid_proxy'] - base['final_fid_proxy']:+.2f}") in report


def test_the_same_noise_gives_every_arm_the_same_samples_before_training(fashion, tmp_path):
    task = prepared(dit_config(fashion, tmp_path))
    noise, labels = dit.sampler_inputs(20)
    again_noise, again_labels = dit.sampler_inputs(20)
    assert torch.equal(noise, again_noise) and torch.equal(labels, again_labels)
    assert labels.tolist()[:11] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    torch.manual_seed(0)
    model = task.build_model()
    first = task.final_evaluate(model, tmp_path)
    assert first == task.final_evaluate(model, tmp_path)


def test_tread_arm_is_left_out_with_a_warning_without_routes(fashion, tmp_path, monkeypatch):
    monkeypatch.setattr(tread, "routes_supported", lambda: False)
    config = resolve(dit_config(fashion, tmp_path, arms=("baseline", "tread")))
    with pytest.warns(UserWarning, match="tread left out"):
        plans = plan_arms(config, prepared(config).shape())
    assert list(plans) == ["baseline"]


def test_tread_plan_counts_the_routed_layer_tokens(fashion, tmp_path, monkeypatch):
    monkeypatch.setattr(tread, "routes_supported", lambda: True)
    config = resolve(dit_config(fashion, tmp_path, arms=("baseline", "random_ltd", "tread")))
    shape = prepared(config).shape()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plans = plan_arms(config, shape)
    routed = plans["tread"]
    assert routed.drop_layers == (1,) and routed.steps == plans["baseline"].steps
    kept = shape.seq_len // 2  # 49 tokens: 24 go through the route
    per_step = config.batch_size * ((shape.num_layers - 1) * shape.seq_len + kept)
    assert routed.layer_tokens == routed.steps * per_step


def test_a_tread_span_is_one_run_of_consecutive_layers():
    assert tread.span_of((2, 3, 4)) == (2, 4)
    with pytest.raises(ConfigError, match="--drop-layers"):
        tread.span_of((1, 3))


def test_the_routed_handle_ignores_the_drivers_kept_length():
    class Handle:
        drop_layers = [1, 2]

        def set_keep(self, keep):
            raise AssertionError("routes fix their own kept length")

    handle = tread.RoutedHandle(Handle())
    handle.set_keep(3)
    assert handle.drop_layers == [1, 2]


@pytest.mark.skipif(not tread.routes_supported(), reason="this random_ltd.apply has no routes= yet (span routing)")
def test_quick_run_trains_the_tread_arm(fashion, tmp_path):
    summary = run_training(dit_config(fashion, tmp_path, arms=("baseline", "tread"), layers=4,
                                      drop_layers="1:3"))
    assert summary["arms"]["tread"]["layer_tokens"] < summary["arms"]["baseline"]["layer_tokens"]
