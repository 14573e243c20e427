"""Tiny models (random weights, built from configs) covering every registered layer family."""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers as T

import random_ltd

SEQ = 16
BATCH = 3
VOCAB = 97


@dataclasses.dataclass
class Case:
    name: str
    family: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], dict]
    loss: Callable[[nn.Module, dict], torch.Tensor]
    seq_len: int = SEQ
    padded: bool = False

    def __str__(self) -> str:
        return self.name


def sample_indices(batch: int, seq_len: int, keep: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform ``keep``-subset per sequence, sorted (what a dropping layer keeps), from ``generator``."""
    return random_ltd.ops.keep_top(torch.rand(batch, seq_len, generator=generator), keep)


def _ids(gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)


def _padding(gen: torch.Generator, left: bool = False) -> torch.Tensor:
    """Rows with 2..SEQ valid tokens; row 0 keeps only 2."""
    lengths = torch.randint(2, SEQ + 1, (BATCH,), generator=gen)
    lengths[0] = 2
    positions = torch.arange(SEQ)
    valid = positions < lengths[:, None]
    return valid.flip(1).long() if left else valid.long()


def _lm_inputs(gen, padded=False, left=False):
    inputs = {"input_ids": _ids(gen)}
    if padded:
        inputs["attention_mask"] = _padding(gen, left=left)
    return inputs


def _lm_loss(model, inputs):
    logits = model(**inputs).logits
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
    labels = inputs["input_ids"].masked_fill(~mask, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def packed_positions(gen: torch.Generator, seq_len: int = SEQ) -> torch.Tensor:
    """``(1, seq_len)`` positions of 3-5 documents packed into one row (each restarts at 0)."""
    cuts = torch.randperm(seq_len - 1, generator=gen)[: int(torch.randint(2, 5, (1,), generator=gen))] + 1
    starts = torch.zeros(seq_len, dtype=torch.bool)
    starts[0], starts[cuts] = True, True
    document = starts.cumsum(0) - 1
    first = torch.nonzero(starts).flatten()
    return (torch.arange(seq_len) - first[document]).unsqueeze(0)


def _packed_inputs(gen):
    """transformers' padding-free form: one row, document boundaries where the position is 0.

    Without ``use_cache=False`` a causal LM builds a cache in training too, and transformers then
    ignores the packing (documents attend to each other) with or without random-LTD.
    """
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=gen)
    return {"input_ids": ids, "position_ids": packed_positions(gen), "use_cache": False}


def _image_inputs(gen):
    return {"pixel_values": torch.randn(BATCH, 1, 8, 8, generator=gen),
            "labels": torch.randint(0, 3, (BATCH,), generator=gen)}


def _hf_loss(model, inputs):
    return model(**inputs).loss


def gpt2(impl="sdpa"):
    config = T.GPT2Config(n_layer=4, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64, bos_token_id=0,
                          eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=impl)
    return T.GPT2LMHeadModel(config)


def _encoder_config(cls, impl="sdpa", **extra):
    return cls(num_hidden_layers=4, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB,
               max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
               attn_implementation=impl, **extra)


def bert(impl="sdpa"):
    return T.BertForMaskedLM(_encoder_config(T.BertConfig, impl))


def roberta(impl="sdpa"):
    return T.RobertaForMaskedLM(_encoder_config(T.RobertaConfig, impl, pad_token_id=1))


def xlm_roberta(impl="sdpa"):
    return T.XLMRobertaForMaskedLM(_encoder_config(T.XLMRobertaConfig, impl, pad_token_id=1))


def _vision_config(cls, impl="sdpa"):
    return cls(num_hidden_layers=4, hidden_size=32, num_attention_heads=2, intermediate_size=64, image_size=8,
               patch_size=2, num_channels=1, num_labels=3, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, attn_implementation=impl)


def vit(impl="sdpa"):
    return T.ViTForImageClassification(_vision_config(T.ViTConfig, impl))


def deit(impl="sdpa"):
    return T.DeiTForImageClassification(_vision_config(T.DeiTConfig, impl))


def _decoder_config(cls, impl="sdpa"):
    return cls(num_hidden_layers=4, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0,
               eos_token_id=0, pad_token_id=0, attn_implementation=impl)


def llama(impl="sdpa"):
    return T.LlamaForCausalLM(_decoder_config(T.LlamaConfig, impl))


def mistral(impl="sdpa"):
    return T.MistralForCausalLM(_decoder_config(T.MistralConfig, impl))


def qwen2(impl="sdpa"):
    return T.Qwen2ForCausalLM(_decoder_config(T.Qwen2Config, impl))


def mistral_sliding(impl="sdpa"):  # a window of 4 of 16 tokens: the mask built before the layers holds it
    config = _decoder_config(T.MistralConfig, impl)
    config.sliding_window = 4
    return T.MistralForCausalLM(config)


def qwen2_sliding(impl="eager"):  # every layer a sliding one (window 4)
    config = _decoder_config(T.Qwen2Config, impl)
    config.use_sliding_window, config.sliding_window = True, 4
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    return T.Qwen2ForCausalLM(config)


def _rotary_config(cls, impl="sdpa", **extra):
    return cls(num_hidden_layers=4, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
               max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation=impl,
               **extra)


def phi(impl="sdpa"):
    return T.PhiForCausalLM(_rotary_config(T.PhiConfig, impl, resid_pdrop=0.0, embd_pdrop=0.0))


def gemma(impl="sdpa"):
    return T.GemmaForCausalLM(_rotary_config(T.GemmaConfig, impl, head_dim=8, num_key_value_heads=2))


def gemma2(impl="eager"):  # no sdpa path in transformers; sliding-window (6) and full layers alternate
    return T.Gemma2ForCausalLM(_rotary_config(T.Gemma2Config, impl, head_dim=8, num_key_value_heads=2,
                                              sliding_window=6))


def qwen3(impl="sdpa"):
    return T.Qwen3ForCausalLM(_rotary_config(T.Qwen3Config, impl, head_dim=8, num_key_value_heads=2))


def gpt_neox(impl="sdpa"):
    return T.GPTNeoXForCausalLM(_rotary_config(T.GPTNeoXConfig, impl, hidden_dropout=0.0, attention_dropout=0.0))


def gptj(impl="sdpa"):
    config = T.GPTJConfig(n_layer=4, n_embd=32, n_head=4, rotary_dim=4, vocab_size=VOCAB, n_positions=64,
                          bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          attn_implementation=impl)
    return T.GPTJForCausalLM(config)


def opt(impl="sdpa"):
    config = T.OPTConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2, ffn_dim=64,
                         word_embed_proj_dim=32, vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=1,
                         bos_token_id=0, eos_token_id=0, dropout=0.0, attention_dropout=0.0,
                         attn_implementation=impl)
    return T.OPTForCausalLM(config)


def gpt_bigcode(impl="sdpa"):
    config = T.GPTBigCodeConfig(n_layer=4, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64, bos_token_id=0,
                                eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                attn_implementation=impl)
    return T.GPTBigCodeForCausalLM(config)


def gpt_neo(impl="eager"):  # no sdpa path in transformers; alternating global and local (window 6) attention
    config = T.GPTNeoConfig(num_layers=4, hidden_size=32, num_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
                            attention_types=[[["global", "local"], 2]], window_size=6, bos_token_id=0,
                            eos_token_id=0, resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0,
                            attn_implementation=impl)
    return T.GPTNeoForCausalLM(config)


@contextlib.contextmanager
def window_in_original_positions(layer: nn.Module, arguments: dict, idx: torch.Tensor):
    """For a reference run of a GPT-Neo local layer on the kept tokens ``idx`` (one sequence):
    the window goes into ``arguments["attention_mask"]`` in original positions, and the layer's
    own ``bias`` (a window in the positions of its input) is made global while the context lasts."""
    attention = getattr(getattr(layer, "attn", None), "attention", None)
    if getattr(attention, "attention_type", None) != "local":
        yield
        return
    distance = idx[:, None] - idx[None, :]
    outside = (distance < 0) | (distance >= attention.config.window_size)
    mask = arguments["attention_mask"]
    arguments["attention_mask"] = mask.masked_fill(outside, torch.finfo(mask.dtype).min)
    local_bias = attention.bias
    attention.bias = torch.tril(torch.ones_like(local_bias))
    try:
        yield
    finally:
        attention.bias = local_bias


def falcon(impl="sdpa", alibi=False):
    config = T.FalconConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=4, vocab_size=VOCAB,
                            alibi=alibi, new_decoder_architecture=False, multi_query=False, bos_token_id=0,
                            eos_token_id=0, hidden_dropout=0.0, attention_dropout=0.0, attn_implementation=impl)
    return T.FalconForCausalLM(config)


def bloom(impl="eager"):
    config = T.BloomConfig(n_layer=4, hidden_size=32, n_head=4, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0,
                           hidden_dropout=0.0, attention_dropout=0.0, attn_implementation=impl)
    return T.BloomForCausalLM(config)


def distilbert(impl="sdpa"):
    config = T.DistilBertConfig(n_layers=4, dim=32, n_heads=2, hidden_dim=64, vocab_size=VOCAB,
                                max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                attn_implementation=impl)
    return T.DistilBertForMaskedLM(config)


def modernbert(impl="sdpa"):  # global attention every 2nd layer, local (window 6) in between
    config = T.ModernBertConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                vocab_size=VOCAB, max_position_embeddings=64, global_attn_every_n_layers=2,
                                local_attention=6, pad_token_id=0, bos_token_id=0, eos_token_id=0, cls_token_id=0,
                                sep_token_id=0, attention_dropout=0.0, mlp_dropout=0.0, embedding_dropout=0.0,
                                attn_implementation=impl)
    return T.ModernBertForMaskedLM(config)


def _moe_config(cls, impl, **extra):
    return _rotary_config(cls, impl, num_key_value_heads=2, output_router_logits=True, router_aux_loss_coef=0.5,
                          num_experts_per_tok=2, **extra)


def mixtral(impl="sdpa"):
    return T.MixtralForCausalLM(_moe_config(T.MixtralConfig, impl, num_local_experts=4))


def qwen2_moe(impl="sdpa"):  # with a shared expert
    return T.Qwen2MoeForCausalLM(_moe_config(T.Qwen2MoeConfig, impl, num_experts=4, moe_intermediate_size=32,
                                             shared_expert_intermediate_size=32))


def qwen3_moe(impl="sdpa"):
    return T.Qwen3MoeForCausalLM(_moe_config(T.Qwen3MoeConfig, impl, num_experts=4, moe_intermediate_size=32,
                                             head_dim=8))


def olmoe(impl="sdpa"):
    return T.OlmoeForCausalLM(_moe_config(T.OlmoeConfig, impl, num_experts=4))


def _hybrid_config(cls, **extra):
    return _rotary_config(cls, "sdpa", num_key_value_heads=2, **extra)


def bamba():  # Mamba-2 mixers, attention at layer 1
    return T.BambaForCausalLM(_hybrid_config(T.BambaConfig, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8,
                                             mamba_n_groups=1, attn_layer_indices=[1], mamba_chunk_size=16))


def lfm2():  # short convolutions and attention layers of one class
    return T.Lfm2ForCausalLM(_hybrid_config(T.Lfm2Config, layer_types=["conv", "full_attention"] * 2))


def lfm2_moe():
    return T.Lfm2MoeForCausalLM(_hybrid_config(T.Lfm2MoeConfig, layer_types=["conv", "full_attention"] * 2,
                                               num_experts=4, moe_intermediate_size=32, num_experts_per_tok=2,
                                               num_dense_layers=1))


def jamba():
    return T.JambaForCausalLM(_hybrid_config(T.JambaConfig, attn_layer_period=2, attn_layer_offset=1,
                                             expert_layer_period=4, expert_layer_offset=3, mamba_d_state=8,
                                             mamba_dt_rank=4))


def qwen3_next():  # gated delta-net (linear attention with a short convolution) and attention layers
    return T.Qwen3NextForCausalLM(_hybrid_config(T.Qwen3NextConfig, head_dim=8, linear_num_value_heads=2,
                                                 linear_num_key_heads=2, linear_key_head_dim=8,
                                                 linear_value_head_dim=8, num_experts=4, moe_intermediate_size=32,
                                                 shared_expert_intermediate_size=32, num_experts_per_tok=2))


def falcon_h1():  # attention and Mamba-2 in parallel in every layer
    return T.FalconH1ForCausalLM(_hybrid_config(T.FalconH1Config, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8,
                                                mamba_d_state=8, mamba_n_groups=1, head_dim=8, mamba_chunk_size=16))


def granite_moe_hybrid():
    return T.GraniteMoeHybridForCausalLM(_hybrid_config(
        T.GraniteMoeHybridConfig, layer_types=["mamba", "attention"] * 2, mamba_n_heads=4, mamba_d_head=16,
        mamba_d_state=8, mamba_n_groups=1, num_local_experts=0, shared_intermediate_size=64, mamba_chunk_size=16))


HYBRIDS = [bamba, lfm2, lfm2_moe, jamba, qwen3_next, falcon_h1, granite_moe_hybrid]


class TorchEncoderLM(nn.Module):
    """Embedding + ``nn.TransformerEncoder`` + head; causal or bidirectional, with padding."""

    def __init__(self, batch_first=True, causal=False):
        super().__init__()
        self.batch_first, self.causal = batch_first, causal
        self.embed = nn.Embedding(VOCAB, 32)
        layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(32, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        padding = None if attention_mask is None else attention_mask == 0
        mask = nn.Transformer.generate_square_subsequent_mask(input_ids.shape[1]) if self.causal else None
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.encoder(x, mask=mask, src_key_padding_mask=padding, is_causal=self.causal)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return T.modeling_outputs.MaskedLMOutput(logits=self.head(x))


class Block(nn.Module):
    """A nanoGPT-style block: ``Block(x) -> x``, causal attention inside."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        batch, seq, dim = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(dim, dim=2)
        q, k, v = (t.view(batch, seq, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, seq, dim)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class NanoGPT(nn.Module):
    def __init__(self, layers=4, dim=32):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, dim), nn.Embedding(64, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        x = self.wte(input_ids) + self.wpe(torch.arange(input_ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return T.modeling_outputs.CausalLMOutput(logits=self.head(x))


class MaskedBlock(Block):
    """Bidirectional attention by hand with ``-inf`` masking: a fully blocked row is NaN unless
    random-LTD prevents it."""

    def forward(self, x, attention_mask=None):
        batch, seq, dim = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(dim, dim=2)
        q, k, v = (t.view(batch, seq, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)
        scores = scores.masked_fill(~attention_mask, float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, dim)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class MaskedNanoGPT(NanoGPT):
    def __init__(self, layers=4, dim=32):
        super().__init__(layers, dim)
        self.blocks = nn.ModuleList(MaskedBlock(dim) for _ in range(layers))

    def forward(self, input_ids, attention_mask):
        seq = input_ids.shape[1]
        # Bidirectional, padding keys blocked for every query: no row is empty at full length, but
        # a kept set of padding tokens only leaves rows with every key blocked.
        mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, seq, seq)
        x = self.wte(input_ids) + self.wpe(torch.arange(seq))
        for block in self.blocks:
            x = block(x, mask)
        return T.modeling_outputs.CausalLMOutput(logits=self.head(x))


random_ltd.register_layer(Block)
random_ltd.register_layer(MaskedBlock, masks=("attention_mask",))


def _case(name, family, build, padded=False, left=False, image=0, packed=False):
    if packed:
        return Case(name, family, build, _packed_inputs, _lm_loss)
    if image:
        return Case(name, family, build, _image_inputs, _hf_loss, seq_len=16 + image)
    return Case(name, family, build, lambda g: _lm_inputs(g, padded, left), _lm_loss, padded=padded)


CASES = [
    _case("gpt2-sdpa", "gpt2", lambda: gpt2("sdpa")),
    _case("gpt2-eager-pad", "gpt2", lambda: gpt2("eager"), padded=True),
    _case("gpt2-sdpa-leftpad", "gpt2", lambda: gpt2("sdpa"), padded=True, left=True),
    _case("bert-sdpa-pad", "bert", lambda: bert("sdpa"), padded=True),
    _case("bert-eager-pad", "bert", lambda: bert("eager"), padded=True),
    _case("bert-sdpa", "bert", lambda: bert("sdpa")),
    _case("roberta-sdpa-pad", "bert", lambda: roberta("sdpa"), padded=True),
    _case("xlm-roberta-eager", "bert", lambda: xlm_roberta("eager"), padded=True),
    _case("vit-sdpa", "vit", lambda: vit("sdpa"), image=1),
    _case("vit-eager", "vit", lambda: vit("eager"), image=1),
    _case("deit-sdpa", "deit", lambda: deit("sdpa"), image=2),
    _case("llama-sdpa", "llama", lambda: llama("sdpa")),
    _case("llama-eager-leftpad", "llama", lambda: llama("eager"), padded=True, left=True),
    _case("llama-sdpa-pad", "llama", lambda: llama("sdpa"), padded=True),
    _case("mistral-sdpa", "llama", lambda: mistral("sdpa")),
    _case("mistral-sliding-sdpa-pad", "llama", lambda: mistral_sliding("sdpa"), padded=True),
    _case("qwen2-sliding-eager", "llama", lambda: qwen2_sliding("eager")),
    _case("llama-sdpa-packed", "llama", lambda: llama("sdpa"), packed=True),
    _case("llama-eager-packed", "llama", lambda: llama("eager"), packed=True),
    _case("qwen3-sdpa-packed", "llama", lambda: qwen3("sdpa"), packed=True),
    _case("qwen2-eager-pad", "llama", lambda: qwen2("eager"), padded=True),
    _case("phi-sdpa-pad", "llama", lambda: phi("sdpa"), padded=True),
    _case("gemma-eager", "llama", lambda: gemma("eager")),
    _case("gemma2-sliding-eager-pad", "llama", lambda: gemma2("eager"), padded=True),
    _case("gemma2-sliding-eager", "llama", lambda: gemma2("eager")),
    _case("qwen3-sdpa-leftpad", "llama", lambda: qwen3("sdpa"), padded=True, left=True),
    _case("mixtral-sdpa-pad", "moe", lambda: mixtral("sdpa"), padded=True),
    _case("qwen2-moe-eager-pad", "moe", lambda: qwen2_moe("eager"), padded=True),
    _case("qwen3-moe-sdpa", "moe", lambda: qwen3_moe("sdpa")),
    _case("olmoe-sdpa-leftpad", "moe", lambda: olmoe("sdpa"), padded=True, left=True),
    _case("gpt-neox-sdpa", "gpt_neox", lambda: gpt_neox("sdpa")),
    _case("gpt-neox-eager-pad", "gpt_neox", lambda: gpt_neox("eager"), padded=True),
    _case("gptj-sdpa-pad", "gptj", lambda: gptj("sdpa"), padded=True),
    _case("gptj-eager", "gptj", lambda: gptj("eager")),
    _case("opt-sdpa", "opt", lambda: opt("sdpa")),
    _case("opt-eager-pad", "opt", lambda: opt("eager"), padded=True),
    _case("gpt-bigcode-sdpa-pad", "gpt_bigcode", lambda: gpt_bigcode("sdpa"), padded=True),
    _case("gpt-bigcode-eager", "gpt_bigcode", lambda: gpt_bigcode("eager")),
    _case("gpt-neo-local-eager-pad", "gpt_neo", lambda: gpt_neo("eager"), padded=True),
    _case("gpt-neo-local-eager", "gpt_neo", lambda: gpt_neo("eager")),
    _case("falcon-rotary-sdpa-pad", "falcon", lambda: falcon("sdpa"), padded=True),
    _case("falcon-alibi-eager-pad", "falcon", lambda: falcon("eager", alibi=True), padded=True),
    _case("falcon-alibi-sdpa", "falcon", lambda: falcon("sdpa", alibi=True)),
    _case("bloom-alibi-eager-pad", "bloom", lambda: bloom("eager"), padded=True),
    _case("distilbert-sdpa-pad", "distilbert", lambda: distilbert("sdpa"), padded=True),
    _case("distilbert-eager-pad", "distilbert", lambda: distilbert("eager"), padded=True),
    _case("modernbert-sdpa-pad", "modernbert", lambda: modernbert("sdpa"), padded=True),
    _case("modernbert-eager", "modernbert", lambda: modernbert("eager")),
    _case("torch-encoder-pad", "torch.nn.TransformerEncoderLayer", lambda: TorchEncoderLM(), padded=True),
    _case("torch-encoder-causal-seqfirst", "torch.nn.TransformerEncoderLayer",
          lambda: TorchEncoderLM(batch_first=False, causal=True), padded=True),
    _case("nanogpt-block", "Block", NanoGPT),
    _case("manual-softmax-bidir-pad", "MaskedBlock", MaskedNanoGPT, padded=True, left=True),
]


# diffusers: tiny diffusion transformers, 4x4 = 16 image tokens (patch 2 on 8x8 latents, or 16 packed
# Flux latents), trained as denoisers: the loss is the mean squared error to a fixed target.
TEXT = 5  # text tokens of PixArt, SD3 and Flux (never dropped)


class Denoiser(nn.Module):
    """A diffusers transformer behind the zoo's interface: ``pixel_values`` in, ``.logits`` out.

    ``target`` (the regression target of ``_diffusion_loss``) is accepted and unused, so that
    tests may call the model with the case's whole input dictionary.
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, pixel_values, target=None, **conditions):
        sample = self.transformer(pixel_values, **conditions, return_dict=False)[0]
        return T.modeling_outputs.MaskedLMOutput(logits=sample)


def _no_label_dropout(model: nn.Module) -> nn.Module:
    """DiT's label embedders drop class labels at random in training (classifier-free guidance),
    drawing from torch's default generator inside every block: tests that compare two forward
    passes switch it off (tests/adapters/test_diffusers.py checks replay with it on)."""
    for module in model.modules():
        if hasattr(module, "dropout_prob") and hasattr(module, "token_drop"):
            module.dropout_prob = 0.0
    return model


def dit(label_dropout=False):
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=4,
                                  sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=4)
    return Denoiser(model if label_dropout else _no_label_dropout(model))


def pixart():
    from diffusers import PixArtTransformer2DModel

    return Denoiser(PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                             out_channels=4, num_layers=4, sample_size=8, patch_size=2,
                                             norm_num_groups=4, cross_attention_dim=32, caption_channels=24,
                                             use_additional_conditions=False))


def sd3(dual_attention_layers=()):
    from diffusers import SD3Transformer2DModel

    return Denoiser(SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=4,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                          caption_projection_dim=32, pooled_projection_dim=16, out_channels=4,
                                          pos_embed_max_size=8, dual_attention_layers=dual_attention_layers,
                                          qk_norm="rms_norm" if dual_attention_layers else None))


def flux(num_layers=2, num_single_layers=2):
    from diffusers import FluxTransformer2DModel

    return Denoiser(FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=num_layers,
                                           num_single_layers=num_single_layers, attention_head_dim=8,
                                           num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=16,
                                           axes_dims_rope=(2, 2, 4)))


def _latents(gen):
    return torch.randn(BATCH, 4, 8, 8, generator=gen)


def _dit_inputs(gen):
    return {"pixel_values": _latents(gen), "target": _latents(gen),
            "timestep": torch.randint(0, 1000, (BATCH,), generator=gen),
            "class_labels": torch.randint(0, 10, (BATCH,), generator=gen)}


def _pixart_inputs(gen):
    text_valid = torch.ones(BATCH, TEXT, dtype=torch.long)
    text_valid[0, 2:] = 0  # a padded caption: its mask covers text keys only
    image_valid = torch.ones(BATCH, SEQ, dtype=torch.long)
    image_valid[1, :6] = 0  # image keys PixArt's self-attention may not see
    return {"pixel_values": _latents(gen), "target": _latents(gen), "attention_mask": image_valid,
            "timestep": torch.randint(0, 1000, (BATCH,), generator=gen),
            "encoder_hidden_states": torch.randn(BATCH, TEXT, 24, generator=gen),
            "encoder_attention_mask": text_valid, "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


def _sd3_inputs(gen):
    return {"pixel_values": _latents(gen), "target": _latents(gen),
            "timestep": torch.randint(0, 1000, (BATCH,), generator=gen),
            "encoder_hidden_states": torch.randn(BATCH, TEXT, 24, generator=gen),
            "pooled_projections": torch.randn(BATCH, 16, generator=gen)}


def flux_ids(height=4, width=4):
    """Flux's position ids: ``(TEXT, 3)`` zeros for text, ``(h*w, 3)`` (0, row, column) for image."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    return torch.zeros(TEXT, 3), image


def _flux_inputs(gen):
    txt_ids, img_ids = flux_ids()
    return {"pixel_values": torch.randn(BATCH, SEQ, 8, generator=gen),
            "target": torch.randn(BATCH, SEQ, 8, generator=gen), "timestep": torch.rand(BATCH, generator=gen),
            "encoder_hidden_states": torch.randn(BATCH, TEXT, 24, generator=gen),
            "pooled_projections": torch.randn(BATCH, 16, generator=gen), "txt_ids": txt_ids, "img_ids": img_ids}


def _diffusion_loss(model, inputs):
    return F.mse_loss(model(**inputs).logits, inputs["target"])


def _diffusion_case(name, family, build, inputs):
    return Case(name, family, build, inputs, _diffusion_loss)


DIFFUSION_CASES = [
    _diffusion_case("dit", "diffusers.basic_block", dit, _dit_inputs),
    _diffusion_case("pixart-masks", "diffusers.basic_block", pixart, _pixart_inputs),
    _diffusion_case("sd3", "diffusers.joint_block", sd3, _sd3_inputs),
    _diffusion_case("sd35-dual-attention", "diffusers.joint_block", lambda: sd3((0, 1)), _sd3_inputs),
    # Flux's two stacks (double-stream blocks, then single-stream blocks), one per case:
    _diffusion_case("flux-double", "diffusers.flux_block", lambda: flux(4, 0), _flux_inputs),
    _diffusion_case("flux-single", "diffusers.flux_block", lambda: flux(0, 4), _flux_inputs),
]
CASES += DIFFUSION_CASES
