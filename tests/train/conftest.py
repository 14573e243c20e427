from pathlib import Path

import pytest

from random_ltd.train import TrainConfig
from train.fakes import write_corpus, write_fashion_mnist


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """One cache per test session, shared with tests/cli/test_train.py (same path): the
    standard-library BPE is trained once."""
    folder = tmp_path_factory.getbasetemp() / "random-ltd-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def tiny(corpus_dir, cache, tmp_path):
    """A factory of tiny gpt configurations on the fake corpus (seconds per run)."""

    def make(**changes) -> TrainConfig:
        settings = dict(task="gpt", quick=True, data=(str(corpus_dir),), steps=6, batch_size=4, seq_len=32,
                        vocab_size=300, eval_every=3, eval_batches=1, kept_start=8, kept_increment=8,
                        cache_dir=str(cache), out=str(tmp_path / "run"), progress=False)
        settings.update(changes)
        return TrainConfig(**settings)

    return make
