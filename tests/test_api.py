"""apply / remove / the handle: selection, errors, checkpoint keys, call styles, caches, resume."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import zoo

import random_ltd
from random_ltd import ops
from random_ltd.layer_selection import parse_layer_selection

torch.set_num_threads(1)


@pytest.fixture
def drawn(monkeypatch):
    record = []
    original = ops.keep_top

    def spy(*args, **kwargs):
        record.append(original(*args, **kwargs))
        return record[-1]

    monkeypatch.setattr(ops, "keep_top", spy)
    return record


def _ids(seed=0, batch=2, seq=zoo.SEQ):
    return torch.randint(0, zoo.VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "selection,expected",
    [("1:-1", [1, 2, 3, 4]), ("::2", [0, 2, 4]), ("2", [2]), ("0,5", [0, 5]), ([1, -1], [1, 5]),
     (":", [0, 1, 2, 3, 4, 5])],
)
def test_layer_selection(selection, expected):
    assert parse_layer_selection(selection, 6) == expected


@pytest.mark.parametrize("selection", ["6", [-7], "3:3", "1:2:3:4", "a:b", "x", []])
def test_bad_layer_selection_is_a_clear_error(selection):
    with pytest.raises(random_ltd.RandomLTDError, match="layer|select"):
        parse_layer_selection(selection, 6)


def test_model_without_known_layers_says_how_to_register():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(random_ltd.RandomLTDError, match="register_layer"):
        random_ltd.apply(model)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "8"])
def test_bad_keep_is_a_clear_error(bad):
    handle = random_ltd.apply(zoo.gpt2())
    with pytest.raises(random_ltd.RandomLTDError, match="kept length"):
        handle.set_keep(bad)


def test_apply_twice_and_remove_unapplied_are_errors():
    model = zoo.gpt2()
    random_ltd.apply(model)
    with pytest.raises(random_ltd.RandomLTDError, match="already applied"):
        random_ltd.apply(model)
    random_ltd.remove(model)
    with pytest.raises(random_ltd.RandomLTDError, match="not applied"):
        random_ltd.remove(model)


def test_handle_reports_wrapped_layers_and_only_those_drop(drawn):
    model = zoo.gpt2().train()
    handle = random_ltd.apply(model, layers="::2", keep=4)
    assert handle.drop_layers == [0, 2] and handle.num_layers == 4
    assert [layer.name for layer in handle.layers] == ["transformer.h.0", "transformer.h.2"]
    assert "gpt2" in repr(handle)
    model(_ids())
    assert len(drawn) == 2


def test_dropping_every_layer_warns():
    with pytest.warns(UserWarning, match="every layer"):
        random_ltd.apply(zoo.gpt2(), layers=":")


def test_remove_restores_outputs_and_allows_reapply():
    torch.manual_seed(0)
    model = zoo.llama().train()
    reference = copy.deepcopy(model)
    random_ltd.apply(model, keep=4)
    model(_ids()).logits.sum().backward()
    random_ltd.remove(model)
    assert [type(m) for m in model.modules()] == [type(m) for m in reference.modules()]
    assert not any("random_ltd" in name for name in vars(model))
    assert torch.equal(model(_ids(1)).logits, reference(_ids(1)).logits)
    random_ltd.apply(model, keep=4)


def test_state_dict_round_trip_and_dtype_move():
    model = zoo.bert()
    plain = zoo.bert()
    random_ltd.apply(model, keep=4)
    model.load_state_dict(plain.state_dict())
    plain.load_state_dict(model.state_dict())
    model.to(torch.float64).train()
    out = model(_ids()).logits
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_same_seed_same_indices_different_layers_differ(drawn):
    """Draws are a function of the seed and torch's default stream (seeded alike before each run)."""
    first = random_ltd.apply(zoo.gpt2().train(), keep=5, seed=42)
    torch.manual_seed(0)
    first.model(_ids())
    second = random_ltd.apply(zoo.gpt2().train(), keep=5, seed=42)
    torch.manual_seed(0)
    second.model(_ids())
    third = random_ltd.apply(zoo.gpt2().train(), keep=5, seed=43)
    torch.manual_seed(0)
    third.model(_ids())
    assert torch.equal(drawn[0], drawn[2]) and torch.equal(drawn[1], drawn[3])
    assert not torch.equal(drawn[0], drawn[1]), "layers must draw independently"
    assert not torch.equal(drawn[0], drawn[4]), "seeds (e.g. per rank) must give different draws"
    first.model(_ids())
    assert not torch.equal(drawn[0], drawn[6]), "every forward pass draws anew"


def test_handle_state_resumes_the_index_stream(drawn):
    model = zoo.gpt2().train()
    handle = random_ltd.apply(model, keep=5, seed=1)
    for _ in range(3):
        model(_ids())
    saved, saved_rng = handle.state_dict(), torch.get_rng_state()
    model(_ids())
    resumed = random_ltd.apply(zoo.gpt2().train(), keep=None, seed=999)
    resumed.load_state_dict(saved)
    torch.set_rng_state(saved_rng)
    resumed.model(_ids())
    assert resumed.keep == 5
    assert torch.equal(drawn[6], drawn[8]) and torch.equal(drawn[7], drawn[9])


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_replays_the_same_indices(reentrant):
    torch.manual_seed(0)
    model = zoo.llama().train()
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    for m in (model, checkpointed):
        random_ltd.apply(m, keep=5, seed=3)
        m.zero_grad()
        torch.manual_seed(1)  # the same default stream, hence the same draws, in both models
        m(_ids(), labels=_ids()).loss.backward()
    for (name, p), q in zip(model.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_hidden_states_output_records_full_length():
    model = zoo.gpt2().train()
    random_ltd.apply(model, keep=4)
    hidden = model(_ids(), output_hidden_states=True).hidden_states
    assert len(hidden) == 5 and all(h.shape == (2, zoo.SEQ, 32) for h in hidden)


def test_positional_and_keyword_calls_agree():
    model = zoo.llama().train()
    handle = random_ltd.apply(model, keep=6, seed=5)
    layer = model.model.layers[1]
    hidden = torch.randn(2, zoo.SEQ, 32)
    positions = torch.arange(zoo.SEQ).unsqueeze(0)
    rotary = model.model.rotary_emb(hidden, positions)
    torch.manual_seed(1)
    by_keyword = layer(hidden_states=hidden, position_embeddings=rotary, position_ids=positions)
    torch.manual_seed(1)
    by_position = layer(hidden, None, positions, None, False, rotary)
    assert torch.equal(by_keyword, by_position)
    assert handle.keep == 6


def test_use_cache_in_training_still_drops(drawn):
    model = zoo.llama().train()
    random_ltd.apply(model, keep=4)
    model(_ids(), use_cache=True)
    assert len(drawn) == 2


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_generation_never_drops_and_matches_unwrapped(mode, drawn):
    torch.manual_seed(0)
    model = getattr(zoo.gpt2(), mode)()
    reference = copy.deepcopy(model)
    random_ltd.apply(model, keep=2)
    prompt = _ids(batch=1, seq=5)
    with torch.no_grad():
        ours = model.generate(prompt, max_new_tokens=4, do_sample=False)
        theirs = reference.generate(prompt, max_new_tokens=4, do_sample=False)
    assert torch.equal(ours, theirs)
    assert drawn == []


def test_vit_prefix_tokens_kept_on_request(drawn):
    model = zoo.vit().train()
    random_ltd.apply(model, keep=5, keep_prefix_tokens=True)
    model(pixel_values=torch.randn(4, 1, 8, 8))
    assert all((indices[:, 0] == 0).all() for indices in drawn)


def test_unsupported_mask_object_is_a_clear_error():
    model = zoo.llama().train()
    random_ltd.apply(model, keep=4)
    hidden = torch.randn(2, zoo.SEQ, 32)
    rotary = model.model.rotary_emb(hidden, torch.arange(zoo.SEQ).unsqueeze(0))
    with pytest.raises(random_ltd.RandomLTDError, match="not supported"):
        model.model.layers[1](hidden, attention_mask=object(), position_embeddings=rotary)


def test_remove_refuses_to_undo_a_class_swapped_in_after_apply():
    model = zoo.gpt2()
    random_ltd.apply(model)
    layer = model.transformer.h[1]
    layer.__class__ = type("ShardedBlock", (type(layer),), {})  # what fully_shard does to a layer
    with pytest.raises(random_ltd.RandomLTDError, match="changed after random-LTD was applied"):
        random_ltd.remove(model)
    assert random_ltd.get_handle(model) is not None, "a refused remove leaves the model as it was"
    assert type(model.transformer.h[2]).__qualname__.startswith("RandomLTD[")


def _snapshot(model):
    return [type(m) for m in model.modules()], dict(model._forward_pre_hooks), set(vars(model))


@pytest.mark.parametrize("arguments", [
    {"keep": 0}, {"keep": -3}, {"keep": 2.5}, {"keep": True}, {"seed": "abc"}, {"seed": 1.0}, {"seed": True},
    {"layers": "1:x"}, {"layers": [9]}, {"stack": "nowhere"}, {"protect_positions": "0"},
    {"protect_ids": [1.5]}, {"keep_prefix_tokens": "yes"}, {"layers": [1.5, 2]}, {"protect_ids": [-1]},
    {"protect_ids": [zoo.VOCAB]},
])
def test_a_refused_apply_leaves_the_model_exactly_as_it_was(arguments):
    model = zoo.llama().train()
    before = _snapshot(model)
    with pytest.raises(random_ltd.RandomLTDError):
        random_ltd.apply(model, **arguments)
    assert _snapshot(model) == before
    assert random_ltd.get_handle(model) is None
    with pytest.raises(random_ltd.RandomLTDError, match="not applied"):
        random_ltd.remove(model)
    handle = random_ltd.apply(model, keep=4)  # and a valid apply still works
    model(_ids()).logits.sum().backward()
    assert handle.keep == 4


@pytest.mark.parametrize("not_a_model", ["not a model", None, 3, torch.zeros(2)])
def test_apply_to_a_non_module_is_a_clear_error(not_a_model):
    with pytest.raises(random_ltd.RandomLTDError, match="torch.nn.Module"):
        random_ltd.apply(not_a_model)


def test_apply_refuses_layers_already_wrapped_by_tokenbypass():
    from random_ltd import tokenbypass

    model = zoo.gpt2()
    tokenbypass.apply(model, layers="1:3")
    before = _snapshot(model)
    with pytest.raises(random_ltd.RandomLTDError, match="already wrapped"):
        random_ltd.apply(model)
    assert _snapshot(model) == before


def test_protected_positions_and_ids_are_always_kept(drawn):
    model = zoo.gpt2().train()
    random_ltd.apply(model, keep=5, protect_positions=(0, -1), protect_ids=(7,), seed=2)
    ids = _ids()
    ids[0, 3] = ids[1, 9] = 7
    ids[ids == 7] = 7
    model(ids)
    last = zoo.SEQ - 1
    for indices in drawn:
        for row in range(2):
            protected = {0, last} | set((ids[row] == 7).nonzero().flatten().tolist())
            assert protected <= set(indices[row].tolist()), (row, indices[row])


def test_keep_prefix_tokens_is_protecting_the_prefix_positions(drawn):
    model = zoo.vit().train()
    random_ltd.apply(model, keep=3, keep_prefix_tokens=True, seed=4)
    model(pixel_values=torch.randn(2, 1, 8, 8))
    assert drawn and all((indices[:, 0] == 0).all() for indices in drawn)


def test_the_no_grad_rule_of_the_readme(drawn):
    """Training mode under no_grad: a cache passed to the layers means generation (no drop);
    ``use_cache=False`` (or a model without a cache) drops as in any training forward."""
    model = zoo.llama().train()
    random_ltd.apply(model, keep=4)
    with torch.no_grad():
        model(_ids())  # Hugging Face's default use_cache=True builds a cache: treated as generation
        assert drawn == []
        model(_ids(), use_cache=False)
        assert len(drawn) == 2
    with torch.no_grad():
        random_ltd.apply(zoo.bert().train(), keep=4).model(_ids())  # no cache at all: drops
    assert len(drawn) == 4
