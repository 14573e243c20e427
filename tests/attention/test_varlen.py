"""Packed sequences: the kept tokens' varlen boundaries against a brute-force reference.

The flash kernel itself runs only on CUDA (its test skips elsewhere); on CPU the boundaries are
checked against a loop, against the dense block-diagonal mask transformers builds for sdpa, and
as the keyword arguments a dropping layer actually receives.
"""
from __future__ import annotations

import pytest
import torch
import zoo
from attention.sync_spy import syncs as _syncs
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

import random_ltd
from random_ltd import ops
from random_ltd.adapters import hf
from random_ltd.attention.other_inputs import attention_setup, gather_attention_inputs
from random_ltd.attention.varlen import kept_varlen_kwargs
from random_ltd.calls import CallPlan, LayerCall

torch.set_num_threads(1)


def _brute_force_boundaries(documents: list[int], kept: list[int]) -> tuple[list[int], int]:
    """Walk the kept tokens in order; a new document starts where the document number changes."""
    lengths: list[int] = []
    previous = None
    for token in kept:
        if documents[token] != previous:
            lengths.append(0)
            previous = documents[token]
        lengths[-1] += 1
    cumulative = [0]
    for length in lengths:
        cumulative.append(cumulative[-1] + length)
    return cumulative, max(lengths)


def _boundaries(varlen: dict) -> list[int]:
    """The kept documents' boundaries: fixed-size ``cu_seq_lens`` hold empty documents at the end."""
    cu_seq_lens = varlen["cu_seq_lens_q"]
    assert torch.equal(cu_seq_lens, varlen["cu_seq_lens_k"]) and cu_seq_lens.dtype == torch.int32
    assert bool((cu_seq_lens[1:] >= cu_seq_lens[:-1]).all()), "cu_seq_lens must not decrease"
    assert varlen["max_length_q"] == varlen["max_length_k"]
    return sorted(set(cu_seq_lens.tolist()))


def _documents_from_positions(positions: list[int]) -> list[int]:
    documents, current = [], -1
    for position in positions:
        current += position == 0
        documents.append(current)
    return documents


@pytest.mark.parametrize("seed", range(20))
def test_boundaries_from_packed_positions_match_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    seq_len = 40
    positions = zoo.packed_positions(gen, seq_len)
    keep = int(torch.randint(1, seq_len + 1, (1,), generator=gen))
    indices = zoo.sample_indices(1, seq_len, keep, generator=gen)
    varlen = kept_varlen_kwargs(indices, seq_len, None, positions)
    expected, longest = _brute_force_boundaries(_documents_from_positions(positions[0].tolist()), indices[0].tolist())
    assert _boundaries(varlen) == expected
    assert varlen["cu_seq_lens_q"].shape == (keep + 1,)  # as many documents as kept tokens, at most
    assert varlen["max_length_q"] == max(keep, 2) >= longest  # a bound known without reading the device


@pytest.mark.parametrize("seed", range(10))
def test_boundaries_from_given_cu_seq_lens_over_a_batch_match_brute_force(seed):
    """Boundaries the caller passed (over the flattened B*s stream) are re-cut for the kept tokens."""
    gen = torch.Generator().manual_seed(seed)
    batch, seq_len, keep = 3, 12, 5
    cuts = sorted(set(torch.randint(1, batch * seq_len, (6,), generator=gen).tolist()) | {seq_len, 2 * seq_len})
    cu_seq_lens = torch.tensor([0, *cuts, batch * seq_len], dtype=torch.int32)
    documents = [sum(token >= cut for cut in cuts) for token in range(batch * seq_len)]
    indices = zoo.sample_indices(batch, seq_len, keep, generator=gen)
    longest_given = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    varlen = kept_varlen_kwargs(indices, seq_len, cu_seq_lens, None, longest_given)
    expected, longest = _brute_force_boundaries(documents, ops.flat_indices(indices, seq_len).tolist())
    assert _boundaries(varlen) == expected
    assert longest <= varlen["max_length_q"] == max(2, min(longest_given, batch * keep))


def test_a_document_whose_first_token_is_dropped_keeps_its_own_boundary():
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])
    indices = torch.tensor([[0, 2, 4, 5]])  # document 2's first token (index 3) is dropped
    varlen = kept_varlen_kwargs(indices, 7, None, positions)
    assert _boundaries(varlen) == [0, 2, 4]
    gathered = ops.gather_sequence(positions, indices)  # [0, 2, 1, 2]: from it transformers reads one document
    (inferred, _), _ = prepare_fa_kwargs_from_position_ids(gathered)
    assert inferred.tolist() == [0, 4]


def test_unpacked_positions_give_one_document_or_no_boundaries():
    """One row: one document when its positions are one run (decided without reading them on the host);
    several rows are never packed (transformers' rule)."""
    assert _boundaries(kept_varlen_kwargs(torch.tensor([[0, 3]]), 5, None, torch.arange(5)[None] + 2)) == [0, 2]
    assert kept_varlen_kwargs(torch.tensor([[0, 3], [1, 2]]), 5, None, torch.zeros(2, 5, dtype=torch.long)) is None


def _block_diagonal_causal(cu_seq_lens: torch.Tensor, length: int) -> torch.Tensor:
    document = torch.searchsorted(cu_seq_lens[1:], torch.arange(length), right=True)
    position = torch.arange(length)
    return (document[:, None] == document[None, :]) & (position[None, :] <= position[:, None])


def _record(model, handle):
    """Spy on each dropping layer: its drawn indices and the keyword arguments its attention receives."""
    drawn, received = [], []
    layers = dict(model.named_modules())
    for wrapped in handle.layers:
        layers[wrapped.name].self_attn.register_forward_pre_hook(lambda m, a, k: received.append(k), with_kwargs=True)
    original = ops.keep_top

    def spy(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    return drawn, received, spy


@pytest.mark.parametrize("seed", range(5))
def test_boundaries_describe_the_mask_sdpa_layers_receive(seed, monkeypatch):
    """The same attention pattern both ways: sdpa's gathered dense mask and flash's boundaries."""
    model = zoo.llama("sdpa").train()
    handle = random_ltd.apply(model, keep=7, seed=seed)
    drawn, received, spy = _record(model, handle)
    monkeypatch.setattr(ops, "keep_top", spy)
    inputs = zoo._packed_inputs(torch.Generator().manual_seed(seed))
    model(**inputs)
    assert len(drawn) == len(received) == len(handle.layers)
    for indices, kwargs in zip(drawn, received, strict=True):
        cu_seq_lens = kept_varlen_kwargs(indices, zoo.SEQ, None, inputs["position_ids"])["cu_seq_lens_q"]
        assert torch.equal(kwargs["attention_mask"][0, 0], _block_diagonal_causal(cu_seq_lens, 7))
        assert cu_seq_lens.shape == (8,)


def test_a_dropping_layer_receives_the_kept_tokens_boundaries(monkeypatch):
    """cu_seq_lens passed by a padding-free collator reach each dropping layer re-cut for its kept tokens."""
    model = zoo.llama("sdpa").train()
    handle = random_ltd.apply(model, keep=6, seed=3)
    drawn, received, spy = _record(model, handle)
    monkeypatch.setattr(ops, "keep_top", spy)
    inputs = zoo._packed_inputs(torch.Generator().manual_seed(4))
    everything = torch.arange(zoo.SEQ)[None]
    cu_seq_lens = kept_varlen_kwargs(everything, zoo.SEQ, None, inputs["position_ids"])["cu_seq_lens_q"]
    model(**inputs, cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=16, max_length_k=16)
    assert len(drawn) == len(received) == len(handle.layers)
    documents = _documents_from_positions(inputs["position_ids"][0].tolist())
    for indices, kwargs in zip(drawn, received, strict=True):
        expected, longest = _brute_force_boundaries(documents, indices[0].tolist())
        assert _boundaries(kwargs) == expected
        assert longest <= kwargs["max_length_q"] == 6


def test_boundaries_are_computed_without_host_sync():
    gen = torch.Generator().manual_seed(0)
    positions = zoo.packed_positions(gen, 40)
    indices = zoo.sample_indices(1, 40, 17, generator=gen)
    cu_seq_lens = torch.tensor([0, 7, 19, 40], dtype=torch.int32)
    assert _syncs(lambda: kept_varlen_kwargs(indices, 40, None, positions)) == []
    assert _syncs(lambda: kept_varlen_kwargs(indices, 40, cu_seq_lens, None, 21)) == []
    assert _syncs(lambda: kept_varlen_kwargs(indices, 40, None, torch.arange(40)[None])) == []


def test_a_flash_layer_gathers_its_packed_inputs_without_host_sync():
    """The whole per-layer attention-input step of a (pretend) flash layer, packing decided on the device."""
    model = zoo.llama("sdpa")
    model.config._attn_implementation = "flash_attention_2"
    layer = model.model.layers[1]
    setup = attention_setup(layer, hf.LLAMA)
    gen = torch.Generator().manual_seed(1)
    positions = zoo.packed_positions(gen, zoo.SEQ)
    indices = zoo.sample_indices(1, zoo.SEQ, 7, generator=gen)
    call = LayerCall(CallPlan.of(type(layer)), (torch.zeros(1, zoo.SEQ, 32),), {"position_ids": positions})
    assert _syncs(lambda: gather_attention_inputs(layer, hf.LLAMA, call, indices, zoo.SEQ, setup)) == []
    assert call["cu_seq_lens_q"].shape == (8,) and call["max_length_q"] == 7


def _flash_available() -> bool:
    try:
        from transformers.utils import is_flash_attn_2_available
    except ImportError:
        return False
    return torch.cuda.is_available() and is_flash_attn_2_available()


@pytest.mark.skipif(not _flash_available(), reason="flash attention needs CUDA and the flash-attn package")
def test_packed_flash_dropping_matches_sdpa_dropping_on_cuda():
    torch.manual_seed(0)
    flash = zoo.llama("flash_attention_2").to("cuda", torch.bfloat16).train()
    sdpa = zoo.llama("sdpa").to("cuda", torch.bfloat16).train()
    sdpa.load_state_dict(flash.state_dict())
    inputs = {k: v.cuda() for k, v in zoo._packed_inputs(torch.Generator().manual_seed(1)).items()}
    logits = []
    for model in (flash, sdpa):
        random_ltd.apply(model, keep=zoo.SEQ // 2, seed=5)
        torch.manual_seed(1)
        output = model(**inputs, use_cache=False).logits
        output.float().square().mean().backward()
        logits.append(output.float())
    torch.testing.assert_close(logits[0], logits[1], rtol=2e-2, atol=2e-2)
