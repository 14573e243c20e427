"""Small stand-ins for the real data, written into temporary folders (no download, seconds)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from random_ltd.train import TrainConfig

WORDS = ("def return class import self value index token layer model train the of and to a in for "
         "is that with as on by this be are from list dict none true false print range len").split()


def write_corpus(folder: Path, documents: int = 40, words: int = 400, seed: int = 0) -> Path:
    """``documents`` text files of pseudo-code sentences (a Zipf-like word mix, so BPE has merges)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    weights /= weights.sum()
    for index in range(documents):
        chosen = rng.choice(WORDS, size=words, p=weights)
        lines = [" ".join(chosen[i:i + 12]) for i in range(0, words, 12)]
        (folder / f"doc{index:03d}.txt").write_text("\n".join(lines) + "\n")
    return folder


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: np.ndarray) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as stream:
        stream.write(header + payload.astype(np.uint8).tobytes())


def write_fashion_mnist(folder: Path, train: int = 256, test: int = 64, seed: int = 0) -> Path:
    """IDX files in Fashion-MNIST's layout: 8-byte label header, 16-byte image header, gzip.

    Each class is a bright horizontal band at its own height, so the classes are learnable."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, size=count)
        images = rng.integers(0, 60, size=(count, 28, 28))
        for row, label in enumerate(labels):
            images[row, 2 * label + 4: 2 * label + 6, :] = 255
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", 2049, (count,), labels)
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", 2051, (count, 28, 28), images)
    return folder


def tiny_config(corpus_dir: Path, cache: Path, out: Path, **changes) -> TrainConfig:
    """A tiny gpt configuration on the fake corpus (seconds per run)."""
    settings = dict(task="gpt", quick=True, data=(str(corpus_dir),), steps=6, batch_size=4, seq_len=32,
                    vocab_size=300, eval_every=3, eval_batches=1, kept_start=8, kept_increment=8,
                    cache_dir=str(cache), out=str(out), progress=False)
    return TrainConfig(**{**settings, **changes})
