"""Deterministic data order: which examples make up the batch of step ``t``.

The order is a pure function of (seed, step): epoch ``e`` visits the examples in the
permutation drawn from ``(seed, e)``. Both arms of a comparison therefore see the same batches,
and resuming needs nothing but the step count.
"""
from __future__ import annotations

import numpy as np


class EpochSampler:
    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if num_examples < 1 or batch_size < 1:
            raise ValueError(f"need examples and a batch size, got {num_examples} and {batch_size}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self._cached_epoch: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._cached_epoch is None or self._cached_epoch[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            self._cached_epoch = (epoch, order)
        return self._cached_epoch[1]

    def batch(self, step: int) -> np.ndarray:
        """Example indices of step ``step`` (batches run across epoch boundaries)."""
        first = step * self.batch_size
        positions = range(first, first + self.batch_size)
        return np.array([self.permutation(p // self.num_examples)[p % self.num_examples] for p in positions])


def step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    """A generator for per-step randomness of the data (masking, split points): a pure function
    of its arguments, so it resumes exactly. ``stream`` separates independent uses."""
    return np.random.default_rng([seed, step, stream])


def windows(stream: np.ndarray, length: int) -> np.ndarray:
    """Non-overlapping windows of ``length`` tokens as a (count, length) view."""
    count = stream.size // length
    return stream[: count * length].reshape(count, length)
