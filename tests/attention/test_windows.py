"""Local attention windows stay in original positions after dropping.

The reference of each kept token is the original layer run on the gathered subsequence with a
mask this test builds itself: causal, the key valid, and ``0 <= idx[q] - idx[kv] < window`` in
*original* positions. A window counted on the kept tokens spans many more original tokens.
"""
from __future__ import annotations

import pytest
import torch
import transformers as T
import zoo

import random_ltd
from random_ltd import ops
from random_ltd.errors import RandomLTDError
from random_ltd.layer import layer_state

torch.set_num_threads(1)
SEQ, KEEP, WINDOW = 16, 8, 4


def _decoder(cls, impl, **extra):
    extra.setdefault("sliding_window", WINDOW)
    return cls(num_hidden_layers=4, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
               intermediate_size=64, vocab_size=zoo.VOCAB, max_position_embeddings=64, bos_token_id=0,
               eos_token_id=0, pad_token_id=0, attn_implementation=impl, **extra)


def mistral(impl):
    return T.MistralForCausalLM(_decoder(T.MistralConfig, impl))


def qwen2(impl):
    return T.Qwen2ForCausalLM(_decoder(T.Qwen2Config, impl, use_sliding_window=True, max_window_layers=0))


def gemma2(impl):
    return T.Gemma2ForCausalLM(_decoder(T.Gemma2Config, impl))


def gemma3(impl):
    return T.Gemma3ForCausalLM(_decoder(T.Gemma3TextConfig, impl))


def gpt_neo(impl="eager"):
    config = T.GPTNeoConfig(num_layers=4, hidden_size=32, num_heads=2, vocab_size=zoo.VOCAB,
                            max_position_embeddings=64, attention_types=[[["local", "global"], 2]],
                            window_size=WINDOW, bos_token_id=0, eos_token_id=0, resid_dropout=0.0, embed_dropout=0.0,
                            attention_dropout=0.0, attn_implementation=impl)
    return T.GPTNeoForCausalLM(config)


def _window_mask(valid_row: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``(1, 1, k, k)`` bool: causal, in the window and the key valid, all in original positions."""
    distance = idx[:, None] - idx[None, :]
    return ((distance >= 0) & (distance < WINDOW) & valid_row[idx][None, :])[None, None]


def _additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


def _record(model, handle, monkeypatch):
    drawn, calls = [], []
    original = ops.keep_top

    def spy(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(ops, "keep_top", spy)
    modules = dict(model.named_modules())
    for wrapped in handle.layers:
        layer = modules[wrapped.name]
        layer.register_forward_pre_hook(lambda m, a, k: calls.append({"layer": m, "args": a, "kwargs": k}),
                                        with_kwargs=True)
        layer.register_forward_hook(lambda m, a, o: calls[-1].update(output=o if torch.is_tensor(o) else o[0]))
    return drawn, calls


def _rotary_reference(call, b, idx, mask):
    layer, kwargs = call["layer"], call["kwargs"]
    hidden = call["args"][0] if call["args"] else kwargs["hidden_states"]
    cos, sin = kwargs["position_embeddings"]
    out = layer_state(layer).original_class.forward(
        layer, hidden[b : b + 1, idx], attention_mask=mask, position_ids=kwargs["position_ids"][:, idx],
        position_embeddings=(cos[:, idx], sin[:, idx]), use_cache=False)
    return out[0]


def _gpt_neo_reference(call, b, idx, mask):
    """GPT-Neo applies its window through the ``bias`` buffer: made global here, the window is the mask's."""
    layer = call["layer"]
    attention = layer.attn.attention
    local_bias = attention.bias
    attention.bias = torch.tril(torch.ones_like(local_bias))
    try:
        hidden = call["args"][0] if call["args"] else call["kwargs"]["hidden_states"]
        out = layer_state(layer).original_class.forward(layer, hidden[b : b + 1, idx], attention_mask=mask,
                                                        use_cache=False)
    finally:
        attention.bias = local_bias
    return out[0][0] if isinstance(out, tuple) else out[0]


def _is_windowed(layer) -> bool:
    attention = getattr(layer, "self_attn", None) or layer.attn.attention
    window = getattr(attention, "sliding_window", getattr(attention.config, "sliding_window", None))
    return getattr(attention, "attention_type", None) == "local" or window is not None


def _check_against_reference(model, padded, reference, additive, monkeypatch):
    torch.manual_seed(0)
    handle = random_ltd.apply(model.train(), keep=KEEP, seed=11)
    drawn, calls = _record(model, handle, monkeypatch)
    inputs = zoo._lm_inputs(torch.Generator().manual_seed(3), padded=padded)
    inputs["input_ids"] = torch.randint(0, zoo.VOCAB, (zoo.BATCH, SEQ), generator=torch.Generator().manual_seed(4))
    if padded:
        inputs["attention_mask"] = (torch.arange(SEQ) < torch.tensor([SEQ, 11, 14])[:, None]).long()
    valid = inputs.get("attention_mask", torch.ones(zoo.BATCH, SEQ)).bool()
    with torch.no_grad():
        model(**inputs, use_cache=False)
    windowed = [(call, indices) for call, indices in zip(calls, drawn, strict=True) if _is_windowed(call["layer"])]
    assert windowed
    for call, indices in windowed:
        for b in range(zoo.BATCH):
            idx = indices[b]
            mask = _window_mask(valid[b], idx)
            expected = reference(call, b, idx, _additive(mask) if additive else mask)
            rows = valid[b, idx]
            torch.testing.assert_close(call["output"][b, idx][rows], expected[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padded", [False, True], ids=["plain", "padded"])
def test_gpt_neo_local_window_counts_original_positions(padded, monkeypatch):
    _check_against_reference(gpt_neo(), padded, _gpt_neo_reference, True, monkeypatch)


SLIDING = [(mistral, "sdpa"), (mistral, "eager"), (qwen2, "sdpa"), (qwen2, "eager"), (gemma2, "eager"),
           (gemma3, "sdpa"), (gemma3, "eager")]  # Gemma-2 has no sdpa path in transformers


@pytest.mark.parametrize("padded", [False, True], ids=["plain", "padded"])
@pytest.mark.parametrize(("build", "impl"), SLIDING, ids=[f"{build.__name__}-{impl}" for build, impl in SLIDING])
def test_sliding_window_masks_built_before_the_layers_gather_exactly(build, impl, padded, monkeypatch):
    _check_against_reference(build(impl), padded, _rotary_reference, impl == "eager", monkeypatch)


def _pretend_flash(model):
    """Flash attention cannot run on CPU; the decision is taken before any kernel is called."""
    model.config._attn_implementation = "flash_attention_2"
    return model


@pytest.mark.parametrize("build", [mistral, qwen2, gemma2, gemma3], ids=lambda f: f.__name__)
def test_flash_sliding_window_shorter_than_the_sequence_is_refused_before_attention(build):
    model = _pretend_flash(build("eager")).train()
    random_ltd.apply(model, keep=KEEP, layers=":")  # the first layer called drops: nothing reaches flash before
    ids = torch.randint(0, zoo.VOCAB, (2, SEQ))
    with pytest.raises(RandomLTDError, match="sliding window of 4 .*flash"):
        model(input_ids=ids, use_cache=False)


def test_flash_sliding_window_the_decision():
    from random_ltd.attention.other_inputs import check_window_expressible

    assert check_window_expressible("flash_attention_2", None, SEQ) is None
    assert check_window_expressible("flash_attention_2", SEQ, SEQ) is None  # a window >= s never acts
    assert check_window_expressible("sdpa", 3, SEQ) is None  # the mask built before the layers holds it
    assert check_window_expressible("eager", 3, SEQ) is None
    assert check_window_expressible("flex_attention", 3, SEQ) is None
    with pytest.raises(RandomLTDError, match="sliding window of 3"):
        check_window_expressible("flash_attention_2", 3, SEQ)
    with pytest.raises(RandomLTDError, match="sliding window of 3"):
        check_window_expressible("kernels-community/flash-attn3", 3, SEQ)


def test_flash_without_a_window_is_not_refused_by_the_window_check():
    model = _pretend_flash(T.LlamaForCausalLM(_decoder(T.LlamaConfig, "sdpa", sliding_window=None))).train()
    random_ltd.apply(model, keep=KEEP, layers=":")
    with pytest.raises(Exception) as raised:  # no flash kernel on this machine: it fails further on
        model(input_ids=torch.randint(0, zoo.VOCAB, (2, SEQ)), use_cache=False)
    assert "sliding window" not in str(raised.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash attention needs CUDA")
def test_flash_sliding_window_refused_on_cuda():
    pytest.importorskip("flash_attn")
    model = mistral("flash_attention_2").to("cuda", torch.bfloat16).train()
    random_ltd.apply(model, keep=KEEP)
    with pytest.raises(RandomLTDError, match="sliding window"):
        model(input_ids=torch.randint(0, zoo.VOCAB, (2, SEQ), device="cuda"), use_cache=False)
