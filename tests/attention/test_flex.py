"""FlexAttention: the kept tokens' BlockMask, and dropping layers of a flex model against references.

Flex attention has no backward on CPU: CPU tests compare training-mode forwards under
``torch.no_grad()`` with ``use_cache=False``; the backward runs in the CUDA test.
"""
from __future__ import annotations

import copy

import pytest
import torch
import zoo
from attention.sync_spy import syncs
from torch.nn.attention.flex_attention import create_block_mask, create_mask

import random_ltd
from random_ltd.attention import flex
from random_ltd.attention.flex import gather_block_mask

torch.set_num_threads(1)
SEQ, BATCH, KEEP = 40, 3, 17


def _document_padding_causal(valid: torch.Tensor, documents: torch.Tensor):
    def mask_mod(b, h, q, kv):
        return (kv <= q) & valid[b, kv] & (documents[b, q] == documents[b, kv])

    return mask_mod


def _inputs():
    gen = torch.Generator().manual_seed(0)
    valid = torch.arange(SEQ) < torch.tensor([SEQ, 9, 30])[:, None]
    documents = torch.randint(0, 3, (BATCH, SEQ), generator=gen).sort(dim=1).values
    indices = zoo.sample_indices(BATCH, SEQ, KEEP, generator=gen)
    return valid, documents, indices


def test_kept_block_mask_is_the_original_mask_at_the_kept_indices():
    valid, documents, indices = _inputs()
    mask_mod = _document_padding_causal(valid, documents)
    full = create_block_mask(mask_mod, BATCH, 1, SEQ, SEQ, device="cpu", BLOCK_SIZE=16)
    kept = gather_block_mask(full, indices, SEQ)
    assert kept.shape == (BATCH, 1, KEEP, KEEP) and kept.BLOCK_SIZE == full.BLOCK_SIZE
    dense = create_mask(mask_mod, BATCH, 1, SEQ, SEQ, device="cpu")
    kept_dense = create_mask(kept.mask_mod, BATCH, 1, KEEP, KEEP, device="cpu")
    for b in range(BATCH):
        idx = indices[b]
        assert torch.equal(kept_dense[b, 0], dense[b, 0][idx][:, idx]), b


@pytest.mark.parametrize("block_size", [16, (8, 32)])
def test_the_broadcast_build_equals_create_block_mask(block_size):
    valid, documents, indices = _inputs()
    kept_mod = flex.compose_mask_mod(_document_padding_causal(valid, documents), indices)
    ours = flex.build_block_mask(kept_mod, BATCH, 1, KEEP, KEEP, "cpu", block_size)
    torchs = create_block_mask(kept_mod, BATCH, 1, KEEP, KEEP, device="cpu", BLOCK_SIZE=block_size)
    assert ours.shape == torchs.shape and ours.BLOCK_SIZE == torchs.BLOCK_SIZE
    assert torch.equal(ours.to_dense(), torchs.to_dense())
    for field in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
        assert torch.equal(getattr(ours, field), getattr(torchs, field)), field
    assert torch.equal(create_mask(ours.mask_mod, BATCH, 1, KEEP, KEEP, device="cpu"),
                       create_mask(torchs.mask_mod, BATCH, 1, KEEP, KEEP, device="cpu"))


def test_kept_block_masks_are_built_without_host_sync():
    from transformers import masking_utils as mu

    valid, documents, indices = _inputs()
    padded = mu.and_masks(mu.causal_mask_function, mu.padding_mask_function(valid))
    for mask_mod in (mu.causal_mask_function, padded):
        full = create_block_mask(mu.add_offsets_to_mask_function(mask_mod, 0, 0), BATCH, None, SEQ, SEQ, device="cpu")
        assert syncs(lambda full=full: gather_block_mask(full, indices, SEQ)) == []


def test_a_mask_mod_written_for_scalars_goes_through_create_block_mask():
    def scalar_only(b, h, q, kv):
        if q.dim() > 0:  # under create_block_mask's vmap each index is a 0-d tensor
            raise RuntimeError("scalars only")
        return kv <= q

    built = flex.build_block_mask(scalar_only, 1, 1, 20, 20, "cpu", 16)
    reference = create_block_mask(lambda b, h, q, kv: kv <= q, 1, 1, 20, 20, device="cpu", BLOCK_SIZE=16)
    assert torch.equal(built.to_dense(), reference.to_dense())


def test_a_mask_shared_by_the_batch_becomes_one_per_sequence():
    _, _, indices = _inputs()
    causal = create_block_mask(lambda b, h, q, kv: kv <= q, 1, 1, SEQ, SEQ, device="cpu")
    kept = gather_block_mask(causal, indices, SEQ)
    assert kept.shape[0] == BATCH
    kept_dense = create_mask(kept.mask_mod, BATCH, 1, KEEP, KEEP, device="cpu")
    expected = indices[:, None, :, None] >= indices[:, None, None, :]
    assert torch.equal(kept_dense, expected)


def _forward(model, inputs):
    torch.manual_seed(7)  # the same draws for models with the same apply seed
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


def _kind_of_inputs(kind: str) -> dict:
    gen = torch.Generator().manual_seed(1)
    if kind == "packed":  # documents packed in one row: the block mask carries the document boundaries
        inputs = zoo._packed_inputs(gen)
        inputs.pop("use_cache")
        return inputs
    return zoo._lm_inputs(gen, padded=kind == "padded")


@pytest.mark.parametrize("kind", ["plain", "padded", "packed"])
@pytest.mark.parametrize("build", [zoo.llama, zoo.qwen3, zoo.gpt_neox], ids=lambda f: f.__name__)
def test_flex_dropping_matches_sdpa_dropping_with_the_same_draws(build, kind):
    torch.manual_seed(0)
    flex = build("flex_attention").train()
    sdpa = build("sdpa").train()
    sdpa.load_state_dict(flex.state_dict())
    inputs = _kind_of_inputs(kind)
    for model in (flex, sdpa):
        random_ltd.apply(model, keep=zoo.SEQ // 2, seed=5)
    flex_logits, sdpa_logits = _forward(flex, inputs), _forward(sdpa, inputs)
    rows = inputs.get("attention_mask", torch.ones(flex_logits.shape[:2])).bool()
    torch.testing.assert_close(flex_logits[rows], sdpa_logits[rows], rtol=1e-5, atol=1e-5)


def test_flex_sliding_window_dropping_matches_sdpa_dropping():
    """A window of 4 of 16 tokens reaches flex in the model's mask_mod, in original positions (with padding)."""
    test_flex_dropping_matches_sdpa_dropping_with_the_same_draws(zoo.mistral_sliding, "padded")


def test_flex_at_full_keep_equals_the_unwrapped_model():
    torch.manual_seed(0)
    model = zoo.llama("flex_attention").train()
    reference = copy.deepcopy(model)
    random_ltd.apply(model, keep=zoo.SEQ)
    inputs = zoo._lm_inputs(torch.Generator().manual_seed(2), padded=True)
    assert torch.equal(_forward(model, inputs), _forward(reference, inputs))


def test_flex_with_heavy_padding_and_few_kept_tokens_stays_finite():
    torch.manual_seed(0)
    model = zoo.llama("flex_attention").train()
    random_ltd.apply(model, keep=3, seed=1)
    inputs = zoo._lm_inputs(torch.Generator().manual_seed(3), padded=True)
    inputs["attention_mask"][:, :-2] = 0
    assert torch.isfinite(_forward(model, inputs)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention's backward needs CUDA")
def test_flex_backward_matches_sdpa_on_cuda():
    torch.manual_seed(0)
    flex = zoo.llama("flex_attention").cuda().train()
    sdpa = zoo.llama("sdpa").cuda().train()
    sdpa.load_state_dict(flex.state_dict())
    inputs = {k: v.cuda() for k, v in zoo._lm_inputs(torch.Generator().manual_seed(1), padded=True).items()}
    grads = []
    for model in (flex, sdpa):
        random_ltd.apply(model, keep=zoo.SEQ // 2, seed=5)
        torch.manual_seed(1)
        zoo._lm_loss(model, inputs).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5)


def _count_block_masks(monkeypatch, seq_len):
    """Kept-token ``BlockMask`` builds (``random_ltd.attention.flex.build_block_mask``) at a kept length."""
    built = []
    original = flex.build_block_mask

    def counting(mask_mod, batch, heads, query_len, *args, **kwargs):
        if query_len != seq_len:
            built.append(query_len)
        return original(mask_mod, batch, heads, query_len, *args, **kwargs)

    monkeypatch.setattr(flex, "build_block_mask", counting)
    return built


def _six_layer(build):
    model = build("flex_attention")
    config = model.config
    config.num_hidden_layers = 6
    torch.manual_seed(0)
    return type(model)(config).train()  # 6 layers, 4 of them dropping


@pytest.mark.parametrize("build", [zoo.llama, zoo.bert, zoo.vit], ids=lambda f: f.__name__)
def test_unpadded_batches_build_one_block_mask_per_kept_length_and_forward(build, monkeypatch):
    """Causal and bidirectional masks depend only on the order of q and kv, which sorted kept indices keep."""
    model = _six_layer(build)
    handle = random_ltd.apply(model, keep=9, seed=2)
    assert len(handle.layers) == 4
    is_image = build is zoo.vit
    built = _count_block_masks(monkeypatch, zoo.SEQ + is_image)
    gen = torch.Generator().manual_seed(0)
    inputs = zoo._image_inputs(gen) if is_image else zoo._lm_inputs(gen)
    extra = {} if is_image else {"use_cache": False}
    with torch.no_grad():
        model(**inputs, **extra)
        assert len(built) == 1
        handle.set_keep(5)
        model(**inputs, **extra)
        assert len(built) == 2  # one more forward, at another kept length: one more mask


def test_a_shared_kept_mask_equals_the_composed_one():
    """The mask built once at the kept length is the one the kept indices compose, for any draw."""
    from transformers.masking_utils import causal_mask_function, flex_attention_mask

    full = flex_attention_mask(BATCH, SEQ, SEQ, mask_function=causal_mask_function)
    for seed in range(3):
        indices = zoo.sample_indices(BATCH, SEQ, KEEP, generator=torch.Generator().manual_seed(seed))
        kept = gather_block_mask(full, indices, SEQ)
        expected = indices[:, None, :, None] >= indices[:, None, None, :]
        assert torch.equal(create_mask(kept.mask_mod, BATCH, 1, KEEP, KEEP, device="cpu"), expected)


@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_masks_that_differ_per_layer_are_still_built_per_layer(kind, monkeypatch):
    model = _six_layer(zoo.llama)
    handle = random_ltd.apply(model, keep=9, seed=2)
    built = _count_block_masks(monkeypatch, zoo.SEQ)
    _forward(model, _kind_of_inputs(kind))
    assert len(built) == len(handle.layers)
