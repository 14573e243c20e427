"""The classifier-feature FID proxy: the formula against direct computations, and its behaviour on
real Fashion-MNIST images (identical sets, disjoint real sets, noise)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from random_ltd.train import fid
from random_ltd.train.tasks.vit import FASHION_MNIST_DIR, load_fashion_mnist


def random_covariance(rng: np.random.Generator, size: int) -> np.ndarray:
    factor = rng.normal(size=(size, size))
    return factor @ factor.T + 0.1 * np.eye(size)


def test_one_dimensional_gaussians_are_mean_and_std_differences():
    # W2^2 of N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    value = fid.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-0.5]), np.array([[0.25]]))
    assert value == pytest.approx(1.5 ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_diagonal_covariances_match_the_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    mean_a, mean_b = rng.normal(size=5), rng.normal(size=5)
    expected = ((mean_a - mean_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(mean_a, np.diag(a), mean_b, np.diag(b)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_full_covariances_match_the_eigenvalues_of_the_product(seed):
    # tr((A B)^(1/2)) directly: A B is not symmetric, but its eigenvalues are real and non-negative
    rng = np.random.default_rng(seed)
    cov_a, cov_b = random_covariance(rng, 6), random_covariance(rng, 6)
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    cross = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real).sum()
    expected = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    assert fid.frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-9)


def test_identical_gaussians_score_zero_and_the_distance_is_symmetric():
    rng = np.random.default_rng(4)
    cov_a, cov_b = random_covariance(rng, 8), random_covariance(rng, 8)
    mean = rng.normal(size=8)
    assert abs(fid.frechet_distance(mean, cov_a, mean, cov_a)) < 1e-9
    assert fid.frechet_distance(mean, cov_a, mean + 1, cov_b) == pytest.approx(
        fid.frechet_distance(mean + 1, cov_b, mean, cov_a), rel=1e-9)


needs_fashion_mnist = pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
                                         reason="Fashion-MNIST is not installed (dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def classifier_and_images():
    train_images, train_labels = load_fashion_mnist(FASHION_MNIST_DIR, "train")
    test_images, test_labels = load_fashion_mnist(FASHION_MNIST_DIR, "t10k")
    net = fid.train_classifier(train_images[:10000], train_labels[:10000], steps=150)
    return net, test_images, test_labels


@needs_fashion_mnist
def test_the_classifier_learns_fashion_mnist(classifier_and_images):
    net, images, labels = classifier_and_images
    assert fid.accuracy(net, images[:1000], labels[:1000]) > 0.7


@needs_fashion_mnist
def test_real_images_score_low_and_noise_far_worse(classifier_and_images):
    net, images, _ = classifier_and_images
    first, second = fid.as_pixels(images[:500]), fid.as_pixels(images[500:1000])
    noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    identical = fid.fid(net, first, first)
    disjoint = fid.fid(net, first, second)
    against_noise = fid.fid(net, first, noise)
    # ~0 up to float rounding of rank-deficient covariances (dead ReLU features)
    assert abs(identical) < 1e-4 * disjoint
    assert against_noise > 20 * disjoint > 0, (disjoint, against_noise)


def test_the_cached_classifier_is_trained_once(tmp_path: Path, monkeypatch):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, size=(64, 28, 28)).astype(np.uint8), rng.integers(0, 10, size=64)
    first = fid.cached_classifier(tmp_path, images, labels, steps=2)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(fid, "train_classifier", no_training)
    again = fid.cached_classifier(tmp_path, images, labels, steps=2)
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])
