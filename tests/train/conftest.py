from pathlib import Path

import pytest
import torch
from train.fakes import tiny_config, write_corpus, write_fashion_mnist

from random_ltd.train import TrainConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from more threads, and on a shared machine extra threads wait
    on each other: one thread keeps these tests fast and their timing steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    """``tiny(**changes)``: ``tiny_config`` writing to ``tmp_path / "run"``."""
    def make(**changes) -> TrainConfig:
        return tiny_config(corpus_dir, cache, changes.pop("out", tmp_path / "run"), **changes)

    return make
