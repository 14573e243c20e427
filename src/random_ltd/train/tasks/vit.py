"""``vit``: image classification on Fashion-MNIST with a small ViT built from a config.

Fashion-MNIST (Zalando, MIT licence) installs with ``apt-get install -y dataset-fashion-mnist``:
IDX files in ``/usr/share/datasets/fashion-mnist/`` (labels after an 8-byte header, images after
16 bytes). 28x28 images with patch size 2 give 196 patches + CLS = 197 tokens, the paper's ViT
length; ``--quick`` uses patch size 7 (17 tokens).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from random_ltd.train.config import IMAGE_SIZE, TrainConfig, flag_error
from random_ltd.train.sampling import EpochSampler
from random_ltd.train.tasks.base import Batch, ModelShape, Task

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = ("install it with: apt-get install -y dataset-fashion-mnist "
                "(or point --fashion-mnist-dir at its IDX files)")
SIZES = {"tiny": (4, 64, 2), "small": (6, 128, 4), "base": (8, 192, 4)}
# per-pixel statistics of the Fashion-MNIST training images
MEAN, STD = 0.2860, 0.3530
CLASSES = 10


def read_idx(path: Path, header: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        return np.frombuffer(stream.read(), dtype=np.uint8, offset=header)


def find_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    raise flag_error("task", f"Fashion-MNIST not found ({directory / stem}.gz is missing); {INSTALL_HINT}")


def load_fashion_mnist(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``split`` is ``train`` or ``t10k``: images (n, 28, 28) uint8 and labels (n,) uint8."""
    labels = read_idx(find_file(directory, f"{split}-labels-idx1-ubyte"), header=8)
    images = read_idx(find_file(directory, f"{split}-images-idx3-ubyte"), header=16)
    if images.size != labels.size * IMAGE_SIZE * IMAGE_SIZE:
        raise flag_error("fashion_mnist_dir", f"{split} images and labels disagree in {directory}: a damaged download?")
    return images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE), labels


class ViTTask(Task):
    name = "vit"
    metric_names = ("val_loss", "val_accuracy")

    def prepare(self) -> None:
        directory = Path(self.config.fashion_mnist_dir or FASHION_MNIST_DIR)
        self.train_images, self.train_labels = load_fashion_mnist(directory, "train")
        test_images, test_labels = load_fashion_mnist(directory, "t10k")
        needed = self.config.eval_batches * self.config.batch_size
        self.val_images, self.val_labels = test_images[:needed], test_labels[:needed]
        if len(self.train_labels) < self.config.batch_size:
            raise flag_error("batch_size",
                             f"{self.config.batch_size} is more than the {len(self.train_labels)} training images")
        self._samplers: dict[int, EpochSampler] = {}

    def describe_data(self) -> dict:
        return {"name": "Fashion-MNIST", "licence": "MIT (Zalando Research)", "train_images": len(self.train_labels),
                "val_images": len(self.val_labels), "val_split": "first images of t10k",
                "patch_size": self.config.patch_size, "tokens_per_image": self.config.seq_len}

    def shape(self) -> ModelShape:
        layers, hidden, _ = size_of(self.config)
        return ModelShape(layers, hidden, self.config.seq_len, 4 * hidden, 0)

    def build_model(self) -> nn.Module:
        from transformers import ViTConfig, ViTForImageClassification

        layers, hidden, heads = size_of(self.config)
        model_config = ViTConfig(
            image_size=IMAGE_SIZE, patch_size=self.config.patch_size, num_channels=1, num_labels=CLASSES,
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden,
            hidden_dropout_prob=self.config.dropout, attention_probs_dropout_prob=self.config.dropout,
        )
        return ViTForImageClassification(model_config)

    def train_batch(self, seed: int, step: int) -> Batch:
        sampler = self._samplers.get(seed)
        if sampler is None:
            sampler = self._samplers[seed] = EpochSampler(len(self.train_labels), self.config.batch_size, seed)
        chosen = sampler.batch(step)
        return as_batch(self.train_images[chosen], self.train_labels[chosen])

    def val_batches(self) -> list[Batch]:
        size = self.config.batch_size
        return [as_batch(self.val_images[i:i + size], self.val_labels[i:i + size])
                for i in range(0, len(self.val_labels), size)]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: list[Batch]) -> dict[str, float]:
        total, correct, count = 0.0, 0, 0
        for batch in batches:
            output = model(**batch)
            total += float(output.loss) * len(batch["labels"])
            correct += int((output.logits.argmax(-1) == batch["labels"]).sum())
            count += len(batch["labels"])
        return {"val_loss": total / count, "val_accuracy": correct / count}


def as_batch(images: np.ndarray, labels: np.ndarray) -> Batch:
    pixels = (torch.from_numpy(images.astype(np.float32)) / 255.0 - MEAN) / STD
    return {"pixel_values": pixels.unsqueeze(1), "labels": torch.from_numpy(labels.astype(np.int64))}


def size_of(config: TrainConfig) -> tuple[int, int, int]:
    layers, hidden, heads = SIZES[config.model_size]
    return (config.layers or layers), hidden, heads
