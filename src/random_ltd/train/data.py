"""Text corpora and their tokens: where the text comes from, the tokenizer, the train/val split.

The default corpus is the Python standard library's own source (code, docstrings and comments,
``pydoc_data/topics.py`` holds the language reference): present wherever Python is, so the main
job needs no download. Licence: Python Software Foundation License (the ``LICENSE.txt`` next to
the library). Test suites, ``site-packages`` and caches are left out; on CPython 3.11 that is
734 files, 12.1 MB, about 3.5 M tokens with the default 4096-token BPE.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import sysconfig
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from random_ltd.train.config import flag_error

SPECIAL_TOKENS = ("<|endoftext|>", "[CLS]", "[SEP]", "[MASK]", "[PAD]")
STDLIB_LICENCE = "Python Software Foundation License (PSF-2.0)"
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_TOKENS_FORMAT = 1  # bump to invalidate cached token files


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    licence: str
    documents: tuple[str, ...]

    @property
    def num_bytes(self) -> int:
        return sum(len(doc.encode("utf-8")) for doc in self.documents)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for doc in self.documents:
            digest.update(hashlib.sha256(doc.encode("utf-8")).digest())
        return digest.hexdigest()[:24]


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not _STDLIB_SKIP & set(p.relative_to(root).parts))


def load_corpus(specs: Iterable[str], max_mb: float | None = None) -> Corpus:
    """The documents named by ``specs`` (files, folders, globs, ``hf:NAME[:CONFIG][@SPLIT]``);
    no spec: the standard library. ``max_mb`` keeps an evenly spread subset of the documents."""
    specs = list(specs)
    if not specs:
        documents = [_read_text(path) for path in stdlib_files()]
        corpus = Corpus("python-stdlib", STDLIB_LICENCE, tuple(documents))
    else:
        documents = [doc for spec in specs for doc in _documents_of(spec)]
        corpus = Corpus(",".join(specs), "as licensed by its owner", tuple(doc for doc in documents if doc.strip()))
    if not corpus.documents:
        raise flag_error("data", f"{','.join(specs)} holds no text")
    return _limit(corpus, max_mb) if max_mb is not None else corpus


def _documents_of(spec: str) -> list[str]:
    if spec.startswith("hf:"):
        return hf_documents(spec[3:])
    return [_read_text(path) for path in expand_paths(spec)]


def expand_paths(spec: str) -> list[Path]:
    """A file, every file under a folder, or a glob (``**`` recurses); an error when none match."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise flag_error("data", f"{spec!r} matches no file")
    return files


def hf_documents(name: str) -> list[str]:
    """Rows of a Hugging Face dataset: ``NAME[:CONFIG][@SPLIT]`` (split defaults to ``train``).

    NAME is a hub name (needs network) or a local folder of data files: the same code path.
    The text is the ``text`` column, else the first column of strings.
    """
    try:
        import datasets
    except ImportError:
        raise flag_error("data", "hf: datasets need the `datasets` package: pip install datasets") from None
    name, _, split = name.partition("@")
    name, _, subset = name.partition(":")
    try:
        rows = datasets.load_dataset(name, subset or None, split=split or "train")
    except Exception as error:  # datasets raises many types; one line is what the user needs
        raise flag_error("data", f"cannot load Hugging Face dataset {name!r}: {str(error).splitlines()[0]}") from None
    column = _text_column(rows.features, name)
    return [text for text in rows[column] if text]


def _text_column(features, name: str) -> str:
    if "text" in features:
        return "text"
    for column, feature in features.items():
        if getattr(feature, "dtype", None) in ("string", "large_string"):
            return column
    raise flag_error("data", f"dataset {name!r} has no column of text (columns: {', '.join(features)})")


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _limit(corpus: Corpus, max_mb: float) -> Corpus:
    budget = int(max_mb * 1e6)
    stride = max(1, corpus.num_bytes // max(budget, 1))
    kept, used = [], 0
    for doc in corpus.documents[::stride]:
        if used >= budget:
            break
        kept.append(doc[: budget - used])
        used += len(kept[-1].encode("utf-8"))
    return Corpus(f"{corpus.name} (first {max_mb:g} MB, one document in {stride})", corpus.licence, tuple(kept))


def train_bpe(corpus: Corpus, vocab_size: int):
    """A byte-level BPE trained on the corpus: small vocabularies keep the output layer cheap."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus.documents, trainer)
    return tokenizer


def cached_bpe(corpus: Corpus, vocab_size: int, cache_dir: Path):
    """``train_bpe``, trained once per (corpus, vocabulary size) and kept under ``cache_dir``."""
    from tokenizers import Tokenizer

    path = cache_dir / "tokenizers" / f"bpe-{corpus.fingerprint()}-{vocab_size}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tokenizer = train_bpe(corpus, vocab_size)
    atomic_write_bytes(path, tokenizer.to_str().encode("utf-8"))
    return tokenizer


@dataclasses.dataclass(frozen=True)
class TokenSplit:
    """Token ids of the training and validation text, each one stream with documents joined by
    ``eot_id``. The split is by document (every 20th) or, with fewer than 20, the last 5%."""

    train: np.ndarray
    val: np.ndarray
    eot_id: int
    vocab_size: int


def encode_corpus(corpus: Corpus, tokenizer, cache_key: str, cache_dir: Path) -> TokenSplit:
    """Tokenise once and cache the streams (``cache_key`` names the tokenizer)."""
    path = cache_dir / "tokens" / f"{corpus.fingerprint()}-{cache_key}-v{_TOKENS_FORMAT}.npz"
    eot_id, vocab_size = _eot_id(tokenizer), tokenizer.get_vocab_size()
    if path.exists():
        stored = np.load(path)
        return TokenSplit(stored["train"], stored["val"], eot_id, vocab_size)
    encoded = [encoding.ids for encoding in tokenizer.encode_batch(list(corpus.documents))]
    train, val = split_documents(encoded, eot_id)
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max else np.int32
    split = TokenSplit(train.astype(dtype), val.astype(dtype), eot_id, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(temporary, train=split.train, val=split.val)
    os.replace(temporary, path)
    return split


def _eot_id(tokenizer) -> int:
    for token in ("<|endoftext|>", "<|im_end|>", "</s>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise ValueError("the tokenizer has no end-of-text token")


def split_documents(encoded: list[list[int]], eot_id: int, every: int = 20) -> tuple[np.ndarray, np.ndarray]:
    if len(encoded) >= every:
        train_docs = [doc for i, doc in enumerate(encoded) if i % every != every // 2]
        val_docs = [doc for i, doc in enumerate(encoded) if i % every == every // 2]
        return _join(train_docs, eot_id), _join(val_docs, eot_id)
    stream = _join(encoded, eot_id)
    cut = len(stream) - max(1, len(stream) // every)
    return stream[:cut], stream[cut:]


def _join(documents: list[list[int]], eot_id: int) -> np.ndarray:
    pieces = [np.asarray(doc + [eot_id], dtype=np.int64) for doc in documents]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_bytes(payload)
    os.replace(temporary, path)


def describe(corpus: Corpus, split: TokenSplit) -> dict:
    return {"name": corpus.name, "licence": corpus.licence, "documents": len(corpus.documents),
            "bytes": corpus.num_bytes, "train_tokens": int(split.train.size), "val_tokens": int(split.val.size),
            "vocab_size": split.vocab_size}
