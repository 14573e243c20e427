import numpy as np
import pytest

from random_ltd.train import data
from random_ltd.train.config import ConfigError
from random_ltd.train.sampling import EpochSampler, step_rng, windows


def test_stdlib_corpus_is_the_library_without_its_tests():
    files = data.stdlib_files()
    names = {path.name for path in files}
    assert {"os.py", "functools.py", "topics.py"} <= names  # topics.py: the language reference
    assert not any(part in ("test", "tests", "site-packages") for path in files for part in path.parts[-3:-1])


def test_paths_files_folders_and_globs(corpus_dir, tmp_path):
    everything = data.expand_paths(str(corpus_dir))
    assert len(everything) == 40
    assert data.expand_paths(str(corpus_dir / "doc00*.txt")) == everything[:10]
    assert data.expand_paths(str(everything[3])) == [everything[3]]
    with pytest.raises(ConfigError, match="--data: .* matches no file"):
        data.expand_paths(str(tmp_path / "nothing-*.txt"))


def test_limit_keeps_an_evenly_spread_subset_within_the_budget(corpus_dir):
    full = data.load_corpus([str(corpus_dir)])
    limited = data.load_corpus([str(corpus_dir)], max_mb=full.num_bytes / 4e6)
    assert limited.num_bytes <= full.num_bytes / 4 + 4
    assert limited.documents[0] == full.documents[0] and limited.documents[1] == full.documents[4]


def test_hf_loader_reads_a_local_dataset_folder_like_a_hub_name(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = [{"id": i, "body": f"line {i} of text"} for i in range(5)] + [{"id": 5, "body": ""}]
    (folder / "train.jsonl").write_text("\n".join(__import__("json").dumps(row) for row in rows))
    corpus = data.load_corpus([f"hf:{folder}@train"])
    assert corpus.documents == tuple(f"line {i} of text" for i in range(5))  # empty rows dropped
    with pytest.raises(ConfigError, match="--data: cannot load Hugging Face dataset"):
        data.load_corpus([f"hf:{tmp_path / 'missing'}"])


def test_split_is_by_document_or_the_tail():
    documents = [[i] * 3 for i in range(40)]
    train, val = data.split_documents(documents, eot_id=99)
    assert sorted(set(val) - {99}) == [10, 30]  # every 20th document, from the 10th
    assert len(train) + len(val) == 40 * 4 and 10 not in train
    train, val = data.split_documents([list(range(100))], eot_id=1000)  # 101 tokens with the EOT
    assert val.tolist() == [96, 97, 98, 99, 1000] and train.tolist() == list(range(96))


def test_bpe_is_trained_once_and_cached(corpus_dir, tmp_path, monkeypatch):
    corpus = data.load_corpus([str(corpus_dir)])
    first = data.cached_bpe(corpus, 300, tmp_path)
    monkeypatch.setattr(data, "train_bpe", lambda *args: pytest.fail("trained again"))
    second = data.cached_bpe(corpus, 300, tmp_path)
    text = corpus.documents[0][:200]
    assert first.encode(text).ids == second.encode(text).ids
    assert first.decode(first.encode(text).ids) == text
    assert first.get_vocab_size() == 300
    assert [first.token_to_id(t) for t in data.SPECIAL_TOKENS] == list(range(len(data.SPECIAL_TOKENS)))


def test_encoded_streams_are_cached_and_match_the_tokenizer(corpus_dir, tmp_path):
    corpus = data.load_corpus([str(corpus_dir)])
    tokenizer = data.cached_bpe(corpus, 300, tmp_path)
    split = data.encode_corpus(corpus, tokenizer, "bpe300", tmp_path)
    again = data.encode_corpus(corpus, tokenizer, "bpe300", tmp_path)
    assert np.array_equal(split.train, again.train) and np.array_equal(split.val, again.val)
    first_doc = tokenizer.encode(corpus.documents[0]).ids
    assert split.train[: len(first_doc)].tolist() == first_doc and split.train[len(first_doc)] == split.eot_id


def test_each_epoch_visits_every_example_once_in_a_seeded_order():
    sampler = EpochSampler(num_examples=10, batch_size=4, seed=3)
    seen = np.concatenate([sampler.batch(step) for step in range(5)])  # 20 = two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert not np.array_equal(seen[:10], seen[10:20])
    again = EpochSampler(10, 4, seed=3)
    assert np.array_equal(again.batch(4), sampler.batch(4))  # a pure function of (seed, step)
    assert not np.array_equal(EpochSampler(10, 10, seed=4).batch(0), EpochSampler(10, 10, seed=3).batch(0))


def test_step_rng_and_windows_are_pure():
    assert step_rng(1, 2, 3).random() == step_rng(1, 2, 3).random() != step_rng(1, 3, 3).random()
    assert windows(np.arange(10), 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
