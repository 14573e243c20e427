"""A Fréchet distance of image sets in the feature space of a small Fashion-MNIST classifier.

FID proper uses an Inception network trained on ImageNet; its weights cannot be downloaded here,
and Inception's features mean little for 28x28 grey clothes anyway. This is the usual substitute
for small datasets: a small CNN trained on Fashion-MNIST's training images, whose penultimate
layer gives the features. Scores compare runs of this project with each other only, never with
published FIDs. The classifier is trained once and cached (its file name holds its settings).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURES = 64
CLASSES = 10


class FeatureNet(nn.Module):
    """Two conv blocks and a 64-wide hidden layer (the features), then the class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.hidden = nn.Linear(32 * 7 * 7, FEATURES)
        self.head = nn.Linear(FEATURES, CLASSES)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels``: (n, 1, 28, 28) in [0, 1]."""
        x = F.max_pool2d(F.relu(self.conv1(pixels)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.hidden(x.flatten(1)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))


def as_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 28, 28) -> float (n, 1, 28, 28) in [0, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


def train_classifier(images: np.ndarray, labels: np.ndarray, steps: int, seed: int = 0,
                     batch_size: int = 128) -> FeatureNet:
    """Adam on random minibatches of the training images; leaves torch's global RNG untouched."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = FeatureNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    targets = torch.from_numpy(labels.astype(np.int64))
    with torch.enable_grad():  # also when called for an evaluation under no_grad
        for _ in range(steps):
            chosen = torch.randint(0, len(labels), (batch_size,), generator=generator).numpy()
            loss = F.cross_entropy(net(as_pixels(images[chosen])), targets[chosen])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return net.eval()


def cached_classifier(cache: Path, images: np.ndarray, labels: np.ndarray, steps: int, seed: int = 0) -> FeatureNet:
    """The classifier of these settings from ``cache``, trained and saved there the first time."""
    path = Path(cache) / f"fid-classifier-{len(labels)}images-{steps}steps-seed{seed}.pt"
    if path.exists():
        net = FeatureNet()
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    net = train_classifier(images, labels, steps, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(net.state_dict(), temporary)
    temporary.replace(path)
    return net


@torch.no_grad()
def accuracy(net: FeatureNet, images: np.ndarray, labels: np.ndarray) -> float:
    predicted = net(as_pixels(images)).argmax(-1).numpy()
    return float((predicted == labels).mean())


@torch.no_grad()
def features(net: FeatureNet, pixels: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """(n, FEATURES) float64 features of ``pixels`` (n, 1, 28, 28) in [0, 1]."""
    parts = [net.features(pixels[i:i + batch_size].float()) for i in range(0, len(pixels), batch_size)]
    return torch.cat(parts).double().numpy()


def gaussian(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of the rows of ``values``."""
    return values.mean(axis=0), np.cov(values, rowvar=False)


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """``|mean_a - mean_b|^2 + tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2))``.

    ``tr((A B)^(1/2))`` is the sum of the square roots of the eigenvalues of the symmetric
    ``A^(1/2) B A^(1/2)`` (similar to ``A B``), which ``eigh`` finds stably in float64."""
    root_a = _symmetric_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    difference = mean_a - mean_b
    return float(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def fid(net: FeatureNet, pixels_a: torch.Tensor, pixels_b: torch.Tensor) -> float:
    """The Fréchet distance of two image sets (each (n, 1, 28, 28) in [0, 1]) in ``net``'s features."""
    return frechet_distance(*gaussian(features(net, pixels_a)), *gaussian(features(net, pixels_b)))
