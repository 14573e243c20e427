"""diffusers adapters: only image tokens are dropped, in every block kind of DiT, PixArt, SD3 and Flux.

The equivalence properties every family shares (full keep, dropped tokens unchanged, kept tokens
equal the original block on the gathered subsequence, eval, gradients) run on the zoo's diffusion
cases in tests/test_layer.py; here: what is particular to diffusion blocks, checkpointing,
per-block compile and the refusals.
"""
from __future__ import annotations

import copy
import importlib

import pytest
import torch
import torch._dynamo
import zoo

import random_ltd
from random_ltd import ops
from random_ltd.adapters import base, diffusers
from random_ltd.layer import is_wrapped

pytest.importorskip("diffusers")

torch.set_num_threads(1)

CASES = {case.name: case for case in zoo.DIFFUSION_CASES}


def _layer_class(dotted_name: str) -> type:
    module, name = dotted_name.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _step(case, model, seeds=(1,)):
    """Forward every input of ``seeds``, then one backward of the summed loss."""
    model.zero_grad(set_to_none=True)
    loss = sum(case.loss(model, case.inputs(torch.Generator().manual_seed(seed))) for seed in seeds)
    loss.backward()
    return loss.detach(), _grads(model)


def _untouched(model):
    return [type(m) for m in model.modules()], list(model.state_dict()), dict(model.__dict__)


@pytest.mark.parametrize("dotted_name", sorted(diffusers._NAMED))
def test_every_named_family_knows_every_parameter_of_its_forward(dotted_name):
    assert base.unknown_parameters(diffusers._NAMED[dotted_name], _layer_class(dotted_name)) == []


def _spy_blocks(model, index):
    """Record each wrapped block's input image stream and both its output streams."""
    records = []

    def post(module, args, kwargs, output):
        records.append({"image_in": kwargs["hidden_states"], "text_in": kwargs["encoder_hidden_states"],
                        "text_out": output[0], "image_out": output[index]})

    for module in model.modules():
        if is_wrapped(module):
            module.register_forward_hook(post, with_kwargs=True)
    return records


def test_sd3_last_block_returns_no_text_stream_and_still_drops_image_tokens(monkeypatch):
    """SD3's last joint block is ``context_pre_only``: ``(None, image)``; wrapping it must keep that None."""
    case = CASES["sd3"]
    torch.manual_seed(0)
    model = case.build().train()
    assert model.transformer.transformer_blocks[-1].context_pre_only
    reference = copy.deepcopy(model)
    random_ltd.apply(model, layers=[3], keep=8, seed=2)
    records = _spy_blocks(model, index=1)
    case.loss(model, case.inputs(torch.Generator().manual_seed(0)))
    (record,) = records
    assert record["text_out"] is None
    changed = (record["image_out"] != record["image_in"]).any(dim=-1)
    assert changed.sum(dim=1).tolist() == [8] * zoo.BATCH  # exactly the kept tokens went through the block
    full = random_ltd.get_handle(model)
    full.set_keep(zoo.SEQ)
    inputs = case.inputs(torch.Generator().manual_seed(3))
    assert torch.equal(case.loss(model, inputs), case.loss(reference, inputs))


@pytest.mark.parametrize("name", ["sd3", "flux-double", "flux-single"])
def test_text_stream_is_never_dropped(name):
    """Every text token comes out of a dropping joint block, computed by the block (not passed through)."""
    case = CASES[name]
    torch.manual_seed(0)
    model = case.build().train()
    random_ltd.apply(model, layers=[1], keep=4, seed=1)
    records = _spy_blocks(model, index=1)
    case.loss(model, case.inputs(torch.Generator().manual_seed(0)))
    (record,) = records
    assert record["text_out"].shape == record["text_in"].shape == (zoo.BATCH, zoo.TEXT, 32 if "sd3" in name else 16)
    assert (record["text_out"] != record["text_in"]).any(dim=-1).all()


@pytest.mark.parametrize("name", ["flux-double", "flux-single"])
def test_flux_keeps_the_same_image_tokens_in_every_sequence_and_gathers_the_rotary_table(name, monkeypatch):
    """One draw per batch: diffusers applies one unbatched (text + image) rotary table to every sequence."""
    case = CASES[name]
    torch.manual_seed(0)
    model = case.build().train()
    random_ltd.apply(model, layers=[1, 2], keep=6, seed=4)
    tables = []
    original = ops.gather_table_tail

    def spy(table, indices, seq_len):
        gathered = original(table, indices, seq_len)
        tables.append((table, indices, gathered))
        return gathered

    monkeypatch.setattr(ops, "gather_table_tail", spy)
    records = _spy_blocks(model, index=1)
    case.loss(model, case.inputs(torch.Generator().manual_seed(0)))
    assert len(tables) == 2 * 2  # (cos, sin) in each of the two dropping blocks
    for table, indices, gathered in tables:
        assert table.shape[0] == zoo.TEXT + zoo.SEQ and gathered.shape[0] == zoo.TEXT + 6
        assert torch.equal(gathered[: zoo.TEXT], table[: zoo.TEXT])  # text rows untouched
        assert torch.equal(gathered[zoo.TEXT :], table[zoo.TEXT + indices])
    for record in records:
        changed = (record["image_out"] != record["image_in"]).any(dim=-1)
        assert (changed == changed[:1]).all() and changed[0].sum() == 6


def test_adapter_refuses_shared_tables_without_one_draw_per_batch():
    with pytest.raises(random_ltd.RandomLTDError, match="one_draw_per_batch"):
        base.LayerAdapter(name="x", shared_position_pairs=("rotary",))


# Checkpoint replay: the hidden states of the same forwards, with and without checkpointing.

REPLAY_CASES = ["dit-label-dropout", "pixart-masks", "sd3", "flux-double", "flux-single"]


def _replay_case(name):
    if name == "dit-label-dropout":  # the blocks' own label dropout also draws from the default stream
        return zoo.Case(name, "", lambda: zoo.dit(label_dropout=True), CASES["dit"].inputs, CASES["dit"].loss)
    return CASES[name]


@pytest.mark.parametrize("name", REPLAY_CASES)
def test_gradient_checkpointing_replays_the_same_tokens(name):
    """Two forwards, then one backward of their sum: each checkpointed block's replay keeps its forward's tokens."""
    case = _replay_case(name)
    torch.manual_seed(0)
    plain = case.build().train()
    checkpointed = copy.deepcopy(plain)
    full = copy.deepcopy(plain)
    checkpointed.transformer.enable_gradient_checkpointing()
    for model in (plain, checkpointed):
        random_ltd.apply(model, keep=8, seed=6)
    torch.manual_seed(11)
    ref_loss, ref_grads = _step(case, plain, seeds=(1, 2))
    torch.manual_seed(11)
    loss, grads = _step(case, checkpointed, seeds=(1, 2))
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for key in grads:
        assert torch.equal(grads[key], ref_grads[key]), key
    torch.manual_seed(11)
    assert not torch.equal(_step(case, full, seeds=(1, 2))[0], loss), "the comparison must see dropping"


# Per-block compile: each dropping block traced in one graph, equal to eager.


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(CASES))
def test_each_dropping_block_compiles_fullgraph_and_equals_eager(name, fresh_dynamo):
    case = CASES[name]
    torch.manual_seed(0)
    eager = case.build().train()
    compiled = copy.deepcopy(eager)
    random_ltd.apply(eager, keep=8, seed=5)
    handle = random_ltd.apply(compiled, keep=8, seed=5)
    modules = dict(compiled.named_modules())
    for wrapped in handle.layers:
        modules[wrapped.name].compile(fullgraph=True, backend="aot_eager")
    losses = []
    for step in range(2):
        torch.manual_seed(10 + step)
        ref_loss, ref_grads = _step(case, eager)
        torch.manual_seed(10 + step)
        loss, grads = _step(case, compiled)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        for key in ref_grads:
            torch.testing.assert_close(grads[key], ref_grads[key], rtol=1e-4, atol=1e-5, msg=key)
        losses.append(loss)
    assert not torch.equal(losses[0], losses[1]), "draws must change from step to step"


# Refusals: a clear error at apply, the model untouched.


def test_block_adding_positions_inside_is_refused():
    from diffusers.models.attention import BasicTransformerBlock

    model = torch.nn.ModuleList(BasicTransformerBlock(32, 2, 16, positional_embeddings="sinusoidal",
                                                      num_positional_embeddings=16) for _ in range(4))
    before = _untouched(model)
    with pytest.raises(random_ltd.RandomLTDError, match="positional embeddings inside the block"):
        random_ltd.apply(model, keep=8)
    assert _untouched(model) == before


def test_block_without_an_image_token_stream_is_refused():
    """A single-stream block taking text and image concatenated (older diffusers' form) has no image stream."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    class ConcatenatedSingleBlock(FluxSingleTransformerBlock):
        def forward(self, hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
            return hidden_states

    model = torch.nn.ModuleList(ConcatenatedSingleBlock(16, 2, 8) for _ in range(4))
    before = _untouched(model)
    with pytest.raises(random_ltd.RandomLTDError, match="one stream"):
        random_ltd.apply(model, keep=8)
    assert _untouched(model) == before


@pytest.mark.parametrize("layers", [[4], "0:9", [-5]])
def test_layers_outside_the_stack_are_refused(layers):
    model = CASES["dit"].build()
    before = _untouched(model)
    with pytest.raises(random_ltd.RandomLTDError):
        random_ltd.apply(model, layers=layers, keep=8)
    assert _untouched(model) == before


def test_flux_with_both_block_kinds_asks_which_stack():
    model = zoo.flux(2, 3)
    before = _untouched(model)
    with pytest.raises(random_ltd.RandomLTDError, match="single_transformer_blocks"):
        random_ltd.apply(model, keep=8)
    for bad in (("transformer.transformer_blocks", "transformer.nothing"), ("transformer.transformer_blocks",) * 2):
        with pytest.raises(random_ltd.RandomLTDError, match="distinct stacks"):
            random_ltd.apply(model, keep=8, stack=bad)
    assert _untouched(model) == before
    handle = random_ltd.apply(model, keep=8, stack="transformer.single_transformer_blocks")
    assert [layer.name for layer in handle.layers] == ["transformer.single_transformer_blocks.1"]


FLUX_STACKS = ("transformer.transformer_blocks", "transformer.single_transformer_blocks")


def test_flux_drops_in_both_block_kinds_as_one_stack():
    """Double-stream blocks then single-stream blocks, one stack of 5: each dropping block matches
    the original block run on its kept image tokens (with the table's image rows gathered)."""
    case = CASES["flux-double"]
    torch.manual_seed(0)
    model = zoo.flux(2, 3).train()
    reference = copy.deepcopy(model)
    handle = random_ltd.apply(model, keep=zoo.SEQ, seed=3, stack=FLUX_STACKS)
    assert handle.drop_layers == [1, 2, 3] and handle.num_layers == 5
    inputs = case.inputs(torch.Generator().manual_seed(0))
    assert torch.equal(case.loss(model, inputs), case.loss(reference, inputs))  # full keep: the unwrapped model
    handle.set_keep(5)
    records = _spy_blocks(model, index=1)
    loss = case.loss(model, inputs)
    loss.backward()
    assert len(records) == 3 and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    for record in records:
        assert ((record["image_out"] != record["image_in"]).any(dim=-1).sum(dim=1) == 5).all()


def test_flux_joint_attention_mask_is_refused_at_forward():
    case = CASES["flux-single"]
    model = case.build().train()
    random_ltd.apply(model, keep=8)
    inputs = case.inputs(torch.Generator().manual_seed(0))
    mask = torch.ones(zoo.BATCH, 1, 1, zoo.TEXT + zoo.SEQ, dtype=torch.bool)
    with pytest.raises(random_ltd.RandomLTDError, match="joint_attention_kwargs"):
        case.loss(model, {**inputs, "joint_attention_kwargs": {"attention_mask": mask}})
