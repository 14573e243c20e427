"""Text pretraining tasks from scratch: ``gpt`` (causal LM) and ``bert`` (masked LM).

Both use the same corpus, a small byte-level BPE trained on it (cached), and Hugging Face
models built from configs, so the library's GPT-2 and BERT adapters do the dropping.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from random_ltd.train import data
from random_ltd.train.config import MAX_POSITIONS, TrainConfig, flag_error
from random_ltd.train.sampling import EpochSampler, step_rng, windows
from random_ltd.train.tasks.base import Batch, ModelShape, Task, cache_dir

# (layers, hidden, heads) per --model-size; the feed-forward width is 4 x hidden as in GPT-2/BERT
SIZES = {"tiny": (4, 64, 2), "small": (6, 192, 4), "base": (8, 256, 4)}
VAL_SEED = 20220901  # validation masking is fixed, the same for every run


class TextTask(Task):
    @property
    def max_positions(self) -> int:
        return MAX_POSITIONS[self.name][1]

    @property
    def example_length(self) -> int:
        return self.config.seq_len

    def prepare(self) -> None:
        config = self.config
        self.corpus = data.load_corpus(config.data, config.corpus_mb)
        self.split = self.encode(self.corpus)
        self.train_examples = windows(self.split.train, self.example_length)
        needed_val = config.eval_batches * config.batch_size
        self.val_examples = windows(self.split.val, self.example_length)[:needed_val]
        self._check_sizes()
        self._samplers: dict[int, EpochSampler] = {}

    def encode(self, corpus: data.Corpus) -> data.TokenSplit:
        directory = cache_dir(self.config)
        tokenizer = self.tokenizer = data.cached_bpe(corpus, self.config.vocab_size, directory)
        return data.encode_corpus(corpus, tokenizer, f"bpe{self.config.vocab_size}", directory)

    def _check_sizes(self) -> None:
        config, count = self.config, len(self.train_examples)
        if count < config.batch_size:
            raise flag_error("data", f"the corpus gives {count} training sequences of {self.example_length} tokens, "
                                      f"fewer than one batch of {config.batch_size}: "
                                      "add text or lower --batch-size/--seq-len")
        if len(self.val_examples) == 0:
            raise flag_error("data", f"the corpus's validation part ({self.split.val.size} tokens) is shorter than "
                                      f"one sequence of {self.example_length} tokens: add text or lower --seq-len")

    def describe_data(self) -> dict:
        described = data.describe(self.corpus, self.split)
        described.update(train_sequences=len(self.train_examples), val_sequences=len(self.val_examples))
        return described

    def examples(self, seed: int, step: int) -> np.ndarray:
        sampler = self._samplers.get(seed)
        if sampler is None:
            sampler = self._samplers[seed] = EpochSampler(len(self.train_examples), self.config.batch_size, seed)
        return self.train_examples[sampler.batch(step)].astype(np.int64)

    def val_chunks(self) -> list[np.ndarray]:
        size = self.config.batch_size
        return [self.val_examples[i:i + size].astype(np.int64) for i in range(0, len(self.val_examples), size)]


class GPTTask(TextTask):
    """Causal-LM pretraining of a small GPT-2 from scratch."""

    name = "gpt"

    def shape(self) -> ModelShape:
        layers, hidden, _ = size_of(self.config)
        return ModelShape(layers, hidden, self.config.seq_len, 4 * hidden, self.split.vocab_size)

    def build_model(self) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        layers, hidden, heads = size_of(self.config)
        dropout = self.config.dropout
        model_config = GPT2Config(
            vocab_size=self.split.vocab_size, n_positions=self.max_positions, n_embd=hidden, n_layer=layers,
            n_head=heads, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
            bos_token_id=self.split.eot_id, eos_token_id=self.split.eot_id,
        )
        model = GPT2LMHeadModel(model_config)
        model.loss_type = "ForCausalLM"  # what it computes anyway; unset, transformers warns on every run
        return model

    def train_batch(self, seed: int, step: int) -> Batch:
        ids = torch.from_numpy(self.examples(seed, step))
        return {"input_ids": ids, "labels": ids}

    def val_batches(self) -> list[Batch]:
        return [{"input_ids": torch.from_numpy(c), "labels": torch.from_numpy(c)} for c in self.val_chunks()]


class BERTTask(TextTask):
    """Masked-LM pretraining of a small BERT: ``[CLS] A [SEP] B [SEP]`` pairs, 15% masked."""

    name = "bert"

    @property
    def example_length(self) -> int:
        return self.config.seq_len - 3  # room for [CLS] and two [SEP]

    def prepare(self) -> None:
        super().prepare()
        tokenizer_ids = [self.split_token(t) for t in ("[CLS]", "[SEP]", "[MASK]")]
        self.cls_id, self.sep_id, self.mask_id = tokenizer_ids

    def split_token(self, token: str) -> int:
        return self.tokenizer.token_to_id(token)

    def shape(self) -> ModelShape:
        layers, hidden, _ = size_of(self.config)
        return ModelShape(layers, hidden, self.config.seq_len, 4 * hidden, self.split.vocab_size)

    def build_model(self) -> nn.Module:
        from transformers import BertConfig, BertForMaskedLM

        layers, hidden, heads = size_of(self.config)
        model_config = BertConfig(
            vocab_size=self.split.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=4 * hidden, max_position_embeddings=self.max_positions,
            hidden_dropout_prob=self.config.dropout, attention_probs_dropout_prob=self.config.dropout,
            pad_token_id=self.split_token("[PAD]"),
        )
        return BertForMaskedLM(model_config)

    def train_batch(self, seed: int, step: int) -> Batch:
        return self.masked_pairs(self.examples(seed, step), step_rng(seed, step, stream=1))

    def val_batches(self) -> list[Batch]:
        return [self.masked_pairs(c, step_rng(VAL_SEED, i, stream=1)) for i, c in enumerate(self.val_chunks())]

    def masked_pairs(self, chunks: np.ndarray, rng: np.random.Generator) -> Batch:
        """Split each chunk into two segments at a random point, add the special tokens, and mask
        15% of the other positions (80% [MASK], 10% a random token, 10% unchanged)."""
        count, length = chunks.shape
        cuts = rng.integers(length // 4, 3 * length // 4 + 1, size=count)
        ids = np.empty((count, length + 3), dtype=np.int64)
        types = np.zeros_like(ids)
        for row, cut in enumerate(cuts):
            ids[row] = np.concatenate(([self.cls_id], chunks[row, :cut], [self.sep_id], chunks[row, cut:],
                                       [self.sep_id]))
            types[row, cut + 2:] = 1
        ordinary = (ids != self.cls_id) & (ids != self.sep_id)
        chosen = ordinary & (rng.random(ids.shape) < 0.15)
        chosen[:, 1] |= ~chosen.any(axis=1)  # every row predicts something: no empty loss
        labels = np.where(chosen, ids, -100)
        action = rng.random(ids.shape)
        random_ids = rng.integers(len(data.SPECIAL_TOKENS), self.split.vocab_size, size=ids.shape)
        ids = np.where(chosen & (action < 0.8), self.mask_id, ids)
        ids = np.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, ids)
        return {"input_ids": torch.from_numpy(ids), "token_type_ids": torch.from_numpy(types),
                "labels": torch.from_numpy(labels)}


def size_of(config: TrainConfig) -> tuple[int, int, int]:
    layers, hidden, heads = SIZES[config.model_size]
    return (config.layers or layers), hidden, heads
