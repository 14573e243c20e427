"""``dit``: a class-conditional diffusion transformer (diffusers' DiT) on Fashion-MNIST.

The objective is rectified flow: ``x_t = (1 - t) x0 + t noise``, the model predicts the velocity
``noise - x0``, mean squared error over every pixel. It needs no noise schedule, its sampler is a
plain Euler integration from ``t = 1`` (noise) to ``t = 0`` that gives recognisable images in a
few steps, and its loss at a fixed ``t`` is comparable across runs. Images are scaled to
[-1, 1], one channel, no autoencoder: patch size 2 gives 196 image tokens, patch 4 gives 49.

Validation is deterministic: the same images, noise, labels and noise levels ``VAL_LEVELS`` for
every arm and every evaluation. After training (``final_evaluate``) each arm samples the same
noise and labels with ``sample_steps`` Euler steps: a PNG grid, and the FID proxy of ``fid.py``
against held-out test images.
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from random_ltd.rng import derive_seed
from random_ltd.train import fid
from random_ltd.train.config import IMAGE_SIZE, TrainConfig, flag_error
from random_ltd.train.sampling import EpochSampler
from random_ltd.train.tasks.base import Batch, ModelShape, Task, cache_dir
from random_ltd.train.tasks.vit import FASHION_MNIST_DIR, load_fashion_mnist

# (layers, attention heads, head width)
SIZES = {"tiny": (4, 2, 16), "small": (6, 2, 32), "base": (8, 4, 32)}
CLASSES = 10
VAL_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)  # noise levels t of the validation losses
VAL_SEED = 20250501  # the validation noise and the sampler's noise: the same for every run
CLASSIFIER_STEPS = 400  # the FID classifier's training (cached; ~90% test accuracy)
# (samples for the FID, Euler steps) per --quick
SAMPLING = {False: (200, 8), True: (50, 4)}
GRID_ROWS = 5  # the PNG shows the first GRID_ROWS x CLASSES samples: one column per class


class DiTTask(Task):
    name = "dit"
    metric_names = ("val_loss",) + tuple(f"val_loss_t{level}" for level in VAL_LEVELS)

    def prepare(self) -> None:
        directory = Path(self.config.fashion_mnist_dir or FASHION_MNIST_DIR)
        self.train_images, self.train_labels = load_fashion_mnist(directory, "train")
        self.test_images, self.test_labels = load_fashion_mnist(directory, "t10k")
        needed = self.config.eval_batches * self.config.batch_size
        samples, _ = SAMPLING[self.config.quick]
        if len(self.test_labels) < needed + 2 * samples:
            raise flag_error("eval_batches", f"{needed} validation images plus {2 * samples} for the FID are more "
                                             f"than the {len(self.test_labels)} test images")
        self._samplers: dict[int, EpochSampler] = {}

    def describe_data(self) -> dict:
        samples, steps = SAMPLING[self.config.quick]
        return {"name": "Fashion-MNIST", "licence": "MIT (Zalando Research)", "train_images": len(self.train_labels),
                "val_images": self.config.eval_batches * self.config.batch_size, "val_split": "first images of t10k",
                "val_noise_levels": list(VAL_LEVELS), "objective": "rectified flow (velocity), MSE",
                "patch_size": self.config.patch_size, "tokens_per_image": self.config.seq_len,
                "fid_proxy": {"samples": samples, "euler_steps": steps, "reference": "last images of t10k",
                              "features": "64-wide hidden layer of a small CNN trained on the training images"}}

    def shape(self) -> ModelShape:
        layers, heads, width = size_of(self.config)
        return ModelShape(layers, heads * width, self.config.seq_len, 4 * heads * width, 0)

    def build_model(self) -> nn.Module:
        return build_dit(self.config)

    def train_batch(self, seed: int, step: int) -> Batch:
        sampler = self._samplers.get(seed)
        if sampler is None:
            sampler = self._samplers[seed] = EpochSampler(len(self.train_labels), self.config.batch_size, seed)
        chosen = sampler.batch(step)
        generator = torch.Generator().manual_seed(derive_seed(seed, step, 7))
        return noised_batch(self.train_images[chosen], self.train_labels[chosen], generator)

    def val_batches(self) -> list[Batch]:
        size, count = self.config.batch_size, self.config.eval_batches * self.config.batch_size
        generator = torch.Generator().manual_seed(VAL_SEED)
        batches = []
        for start in range(0, count, size):
            images, labels = self.test_images[start:start + size], self.test_labels[start:start + size]
            noise = torch.randn(len(labels), 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
            for level in VAL_LEVELS:
                batches.append({**as_batch(images, labels), "noise": noise, "t": torch.full((len(labels),), level)})
        return batches

    def forward(self, model: nn.Module, batch: Batch) -> types.SimpleNamespace:
        return types.SimpleNamespace(loss=flow_loss(model, **batch))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: list[Batch]) -> dict[str, float]:
        """The mean validation loss at each noise level of ``VAL_LEVELS``, and their mean."""
        losses: dict[float, list[float]] = {level: [] for level in VAL_LEVELS}
        for batch in batches:
            losses[round(float(batch["t"][0]), 6)].append(float(flow_loss(model, **batch)) * len(batch["labels"]))
        count = self.config.eval_batches * self.config.batch_size
        levels = {f"val_loss_t{level}": sum(losses[level]) / count for level in VAL_LEVELS}
        return {"val_loss": sum(levels.values()) / len(levels), **levels}

    @torch.no_grad()
    def final_evaluate(self, model: nn.Module, folder: Path) -> dict[str, float]:
        """Samples from the same noise and labels for every arm: a PNG grid in ``folder`` and the
        FID proxy against held-out test images (and, as the floor, between two real sets)."""
        count, steps = SAMPLING[self.config.quick]
        device = next(model.parameters()).device
        noise, labels = sampler_inputs(count)
        images = euler_sample(model.eval(), noise.to(device), labels.to(device), steps).cpu()
        save_grid(images[:GRID_ROWS * CLASSES], folder / "samples.png")
        classifier = self.classifier()
        real = fid.as_pixels(self.test_images[-count:])
        other_real = fid.as_pixels(self.test_images[-2 * count:-count])
        return {"fid_proxy": fid.fid(classifier, to_unit(images), real),
                "fid_proxy_real": fid.fid(classifier, other_real, real)}

    def classifier(self) -> fid.FeatureNet:
        if getattr(self, "_classifier", None) is None:
            self._classifier = fid.cached_classifier(cache_dir(self.config), self.train_images, self.train_labels,
                                                     CLASSIFIER_STEPS)
        return self._classifier


def build_dit(config: TrainConfig) -> nn.Module:
    from diffusers import DiTTransformer2DModel

    layers, heads, width = size_of(config)
    return DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=width, in_channels=1, out_channels=1,
                                 num_layers=layers, sample_size=IMAGE_SIZE, patch_size=config.patch_size,
                                 num_embeds_ada_norm=CLASSES, norm_num_groups=1, dropout=config.dropout or 0.0)


def size_of(config: TrainConfig) -> tuple[int, int, int]:
    layers, heads, width = SIZES[config.model_size]
    return (config.layers or layers), heads, width


def as_batch(images: np.ndarray, labels: np.ndarray) -> Batch:
    """uint8 images -> pixels in [-1, 1] (n, 1, 28, 28), labels as int64."""
    pixels = torch.from_numpy(images.astype(np.float32)) / 127.5 - 1.0
    return {"pixels": pixels.unsqueeze(1), "labels": torch.from_numpy(labels.astype(np.int64))}


def noised_batch(images: np.ndarray, labels: np.ndarray, generator: torch.Generator) -> Batch:
    """A training batch with its noise and noise levels ``t ~ U(0, 1)``, drawn from ``generator``."""
    batch = as_batch(images, labels)
    batch["noise"] = torch.randn(batch["pixels"].shape, generator=generator)
    batch["t"] = torch.rand(len(labels), generator=generator)
    return batch


def flow_loss(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
    """Rectified flow: MSE of the predicted velocity against ``noise - pixels`` at ``x_t``."""
    level = t[:, None, None, None]
    noisy = (1 - level) * pixels + level * noise
    return F.mse_loss(velocity(model, noisy, t, labels), noise - pixels)


def velocity(model: nn.Module, noisy: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(noisy, timestep=t * 1000, class_labels=labels).sample


def sampler_inputs(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler's starting noise and labels (0, 1, ..., 9, 0, ...): the same for every arm and run."""
    generator = torch.Generator().manual_seed(derive_seed(VAL_SEED, 1))
    noise = torch.randn(count, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return noise, torch.arange(count) % CLASSES


def euler_sample(model: nn.Module, noise: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate ``dx/dt = v`` from ``t = 1`` to ``0`` in ``steps`` equal Euler steps; pixels in [-1, 1]."""
    x = noise
    for index in range(steps):
        t = torch.full((len(labels),), 1.0 - index / steps, device=noise.device)
        x = x - velocity(model, x, t, labels) / steps
    return x.clamp(-1.0, 1.0)


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels + 1.0) / 2.0


def save_grid(pixels: torch.Tensor, path: Path) -> None:
    """Samples in [-1, 1], one column per class (sample ``i`` has label ``i % 10``), as a grey PNG."""
    from PIL import Image

    rows = len(pixels) // CLASSES
    tiles = to_unit(pixels[:rows * CLASSES, 0]).reshape(rows, CLASSES, IMAGE_SIZE, IMAGE_SIZE)
    grid = tiles.permute(0, 2, 1, 3).reshape(rows * IMAGE_SIZE, CLASSES * IMAGE_SIZE)
    Image.fromarray((grid.numpy() * 255).round().astype(np.uint8)).save(path)


def report_lines(summary: dict) -> list[str]:
    """What the report says about the FID proxy (that it is one) and the sample grids of each arm."""
    proxy = summary["data"]["fid_proxy"]
    floors = [arm["final_fid_proxy_real"] for arm in summary["arms"].values() if "final_fid_proxy_real" in arm]
    lines = [f"FID (classifier proxy): not Inception FID. The Fréchet distance of {proxy['samples']} samples per arm "
             f"({proxy['euler_steps']} Euler steps from the same noise and labels for every arm) to as many held-out "
             f"test images, in the features of a small CNN trained on Fashion-MNIST's training images; comparable "
             f"between runs of this task only."
             + (f" Two disjoint sets of real test images score {floors[0]:.2f} (the floor at this sample size)."
                if floors else ""), "",
             "Validation loss: velocity MSE at noise levels t = "
             + ", ".join(str(level) for level in VAL_LEVELS) + " (the same images, noise and labels for every arm), "
             "and their mean; per level:", ""]
    lines += _against_baseline(summary["arms"])
    for name, arm in summary["arms"].items():
        levels = ", ".join(f"t={level}: {_seed_mean(arm, f'final_val_loss_t{level}'):.4f}" for level in VAL_LEVELS)
        lines.append(f"- {name}: {levels}")
    lines.append("")
    for name, arm in summary["arms"].items():
        for run in arm["seeds"]:
            lines += [f"Samples, {name} (seed {run['seed']}), one column per class:", "",
                      f"![{name} samples]({name}/seed{run['seed']}/samples.png)", ""]
    return lines


def _seed_mean(arm: dict, name: str) -> float:
    return sum(run[name] for run in arm["seeds"]) / len(arm["seeds"])


def _against_baseline(arms: dict) -> list[str]:
    """Each dropping arm's differences to the baseline in validation loss and FID proxy (lower is better)."""
    base = arms.get("baseline")
    if base is None or "final_fid_proxy" not in base:
        return []
    words = [f"{name} val loss {arm['final_val_loss'] - base['final_val_loss']:+.4f}, FID proxy "
             f"{arm['final_fid_proxy'] - base['final_fid_proxy']:+.2f}"
             for name, arm in arms.items() if name != "baseline" and "final_fid_proxy" in arm]
    return ["Against the baseline (negative: better): " + "; ".join(words) + ".", ""] if words else []
