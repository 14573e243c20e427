"""Selection strategies: uniform draws, protected tokens, and per-forward context under replay."""
from __future__ import annotations

import pytest
import torch
import zoo

import random_ltd
from random_ltd import ops, rng, tokenbypass

torch.set_num_threads(1)
SPECIAL = (3, 5)
KEEP_TOP = ops.keep_top


def kept_positions(monkeypatch, model, inputs) -> list[torch.Tensor]:
    """The (B, keep) positions each dropping layer kept in one forward pass."""
    seen = []

    def spy(keys, keep):
        seen.append(KEEP_TOP(keys, keep))
        return seen[-1]

    monkeypatch.setattr(ops, "keep_top", spy)
    model(**inputs)
    return seen


def special_batch(gen):
    ids = torch.randint(6, zoo.VOCAB, (zoo.BATCH, zoo.SEQ), generator=gen)
    ids[:, 0], ids[:, 7], ids[:, 15] = 3, 5, 5
    return {"input_ids": ids}


def test_protected_ids_always_kept_and_the_others_spread_evenly(monkeypatch):
    torch.manual_seed(0)
    model = zoo.bert().train()
    random_ltd.apply(model, "1:-1", keep=5, seed=1, protect_ids=SPECIAL)
    counts = torch.zeros(zoo.SEQ)
    for step in range(60):
        kept_sets = kept_positions(monkeypatch, model, special_batch(torch.Generator().manual_seed(step)))
        assert len(kept_sets) == 2
        for kept in kept_sets:
            assert all({0, 7, 15} <= set(row.tolist()) for row in kept)
            assert (kept.diff(dim=1) > 0).all()  # sorted, distinct
            counts += torch.bincount(kept.reshape(-1), minlength=zoo.SEQ)
    others = torch.tensor([p for p in range(zoo.SEQ) if p not in (0, 7, 15)])
    expected = counts[others].sum() / len(others)
    assert ((counts[others] - expected).abs() < 0.25 * expected).all()  # two of 13 each time, evenly


def test_without_special_ids_in_the_batch_protection_draws_what_random_ltd_draws(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    inputs = {"input_ids": torch.randint(6, zoo.VOCAB, (zoo.BATCH, zoo.SEQ), generator=generator)}
    runs = []
    for protect in ((), SPECIAL):
        torch.manual_seed(0)
        model = zoo.bert().train()
        random_ltd.apply(model, "1:-1", keep=5, seed=1, protect_ids=protect)
        runs.append(kept_positions(monkeypatch, model, inputs))
    assert len(runs[0]) == 2 and all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_remove_after_protect_ids_leaves_no_hook():
    model = zoo.bert()
    classes = [type(m) for m in model.modules()]
    random_ltd.apply(model, keep=5, protect_ids=SPECIAL)
    assert len(model._forward_pre_hooks) == 1
    random_ltd.remove(model)
    assert [type(m) for m in model.modules()] == classes and not model._forward_pre_hooks


def test_uniform_keys_give_every_position_and_pair_its_fair_share():
    """Inclusion of each position ~ k/s and of each pair ~ k(k-1)/(s(s-1)), over 4000 draws."""
    seq_len, keep, draws = 12, 4, 4000
    torch.manual_seed(0)
    keys = rng.uniform_keys(seed=7, stream=1, batch=draws, seq_len=seq_len, device=torch.device("cpu"))
    chosen = torch.zeros(draws, seq_len).scatter_(1, ops.keep_top(keys, keep), 1.0)
    single = chosen.mean(0)
    pairs = (chosen.T @ chosen / draws)[~torch.eye(seq_len, dtype=torch.bool)]
    assert (single - keep / seq_len).abs().max() < 0.03
    assert (pairs - keep * (keep - 1) / (seq_len * (seq_len - 1))).abs().max() < 0.025


def test_seeds_sharing_one_default_stream_draw_independently():
    """Two data-parallel ranks seeded alike by torch but with their own apply seeds."""
    seq_len, keep, draws = 16, 8, 3000
    sets = []
    for seed in (1, 2):
        torch.manual_seed(0)
        keys = rng.uniform_keys(seed=seed, stream=1, batch=draws, seq_len=seq_len, device=torch.device("cpu"))
        sets.append(torch.zeros(draws, seq_len).scatter_(1, ops.keep_top(keys, keep), 1.0))
    overlap = (sets[0] * sets[1]).sum(1).mean()
    assert abs(overlap - keep * keep / seq_len) < 0.15  # independent subsets share k^2/s on average


def test_mix32_is_a_bijection_on_a_sample_and_stays_in_32_bits():
    words = torch.arange(0, 1 << 20) * 4093
    mixed = rng.mix32(words & 0xFFFFFFFF)
    assert mixed.unique().numel() == words.numel()
    assert int(mixed.min()) >= 0 and int(mixed.max()) < rng.KEY_LIMIT


@pytest.mark.parametrize("method", ["protect_ids", "tokenbypass"])
@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_context_of_the_replayed_forward_under_interleaved_checkpointing(method, reentrant):
    """Forward A, forward B, backward B, backward A: each replay sees its own forward's context."""
    def grads(checkpointing):
        torch.manual_seed(0)
        model = zoo.bert().train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        if method == "protect_ids":
            random_ltd.apply(model, keep=5, seed=2, protect_ids=SPECIAL)
        else:
            tokenbypass.apply(model, "1:3", keep=5, special_ids=SPECIAL)
        torch.manual_seed(1)
        first = model(**special_batch(torch.Generator().manual_seed(1))).logits.square().mean()
        batch = special_batch(torch.Generator().manual_seed(2))
        batch["input_ids"][:, 2] = 3  # other special positions in the second forward
        second = model(**batch).logits.square().mean()
        second.backward()
        first.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    reference, replayed = grads(False), grads(True)
    for name in reference:
        torch.testing.assert_close(replayed[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_protected_tokens_beyond_keep_are_chosen_uniformly(monkeypatch):
    """Ten protected positions and keep=4: each protected position is kept 4 times in 10."""
    protected = tuple(range(10))
    model = zoo.bert().train()
    random_ltd.apply(model, "1:-1", keep=4, seed=1, protect_positions=protected)
    counts = torch.zeros(zoo.SEQ)
    torch.manual_seed(0)
    for step in range(50):
        for kept in kept_positions(monkeypatch, model, special_batch(torch.Generator().manual_seed(step))):
            assert set(kept.reshape(-1).tolist()) <= set(protected)
            counts += torch.bincount(kept.reshape(-1), minlength=zoo.SEQ)
    share = counts[:10] / counts.sum()  # 1200 picks; one standard deviation is about 0.009
    assert (share - 0.1).abs().max() < 0.03, share


@pytest.mark.parametrize("position", [36, 16, -17])
def test_protected_position_outside_the_sequence_is_an_error_naming_it(position):
    model = zoo.bert().train()
    random_ltd.apply(model, keep=5, protect_positions=(0, position))
    with pytest.raises(random_ltd.RandomLTDError, match=rf"protect_positions.*{position}.*{zoo.SEQ} tokens"):
        model(**special_batch(torch.Generator().manual_seed(0)))


def test_last_position_counted_from_the_end_is_protected(monkeypatch):
    model = zoo.bert().train()
    random_ltd.apply(model, keep=3, protect_positions=(-16, -1))
    for kept in kept_positions(monkeypatch, model, special_batch(torch.Generator().manual_seed(0))):
        assert (kept[:, 0] == 0).all() and (kept[:, -1] == zoo.SEQ - 1).all()


@pytest.mark.parametrize("ids, message", [((3, -1), "protect_ids.*-1.*negative"),
                                          ((3, zoo.VOCAB), f"protect_ids.*{zoo.VOCAB}.*vocabulary of {zoo.VOCAB}")])
def test_protect_ids_outside_the_vocabulary_are_refused_at_apply(ids, message):
    model = zoo.bert().train()
    classes = [type(m) for m in model.modules()]
    with pytest.raises(random_ltd.RandomLTDError, match=message):
        random_ltd.apply(model, keep=5, protect_ids=ids)
    assert [type(m) for m in model.modules()] == classes and not model._forward_pre_hooks


def _first_tokens(position, tokens, keep, context):
    return torch.arange(keep, device=tokens.device).expand(tokens.shape[0], keep)


_first_tokens.needs_context = False


def test_replacing_the_strategy_of_a_protect_ids_handle_works(monkeypatch):
    model = zoo.bert().train()
    handle = random_ltd.apply(model, keep=5, seed=1, protect_ids=SPECIAL)
    handle.selection = _first_tokens
    model(**special_batch(torch.Generator().manual_seed(0)))
    assert handle.strategy is handle.selection
    handle.strategy = random_ltd.UniformSelection(seed=1, protect_ids=SPECIAL)
    kept_sets = kept_positions(monkeypatch, model, special_batch(torch.Generator().manual_seed(0)))
    assert len(kept_sets) == 2 and all({0, 7, 15} <= set(row.tolist()) for kept in kept_sets for row in kept)


def test_a_wrapper_skipping_the_model_hooks_is_a_clear_error_for_protect_ids():
    model = zoo.bert().train()
    random_ltd.apply(model, keep=5, protect_ids=SPECIAL)
    with pytest.raises(random_ltd.RandomLTDError, match="outside a forward of the model"):
        model.forward(**special_batch(torch.Generator().manual_seed(0)))  # what a wrapper calling forward does


class _KeepLargestIds(random_ltd.Strategy):
    """A toy strategy reading the model's inputs: the positions holding the largest ids."""

    needs_context = True

    def begin_forward(self, inputs, keep):
        return inputs["input_ids"] * zoo.SEQ + torch.arange(zoo.SEQ)  # distinct keys, ties to the later position

    def select(self, layer, tokens, keep, keys):
        return keys.topk(keep, dim=1).indices.sort(dim=1).values


def test_a_context_strategy_set_on_a_plain_handle_reads_the_model_inputs_and_its_hooks_go_with_it(monkeypatch):
    model = zoo.bert().train()
    handle = random_ltd.apply(model, keep=5, seed=1)
    assert not model._forward_pre_hooks and not model._forward_hooks
    handle.strategy = _KeepLargestIds()
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 1
    assert "strategy=_KeepLargestIds" in repr(handle)
    seen = []
    select = handle.strategy.select
    monkeypatch.setattr(handle.strategy, "select", lambda *args: seen.append(select(*args)) or seen[-1])
    ids = special_batch(torch.Generator().manual_seed(0))["input_ids"]
    model(input_ids=ids)
    expected = (ids * zoo.SEQ + torch.arange(zoo.SEQ)).topk(5, dim=1).indices.sort(dim=1).values
    assert len(seen) == 2 and all(torch.equal(indices, expected) for indices in seen)
    handle.strategy = random_ltd.UniformSelection(seed=1)
    assert not model._forward_pre_hooks and not model._forward_hooks


@pytest.mark.parametrize("reseed", ["load_state_dict", "new selection"])
def test_a_new_seed_reaches_every_layer(monkeypatch, reseed):
    """Layers hold their stream words (tensors, for torch.compile): a new seed must still reach them."""
    ids = torch.randint(0, zoo.VOCAB, (zoo.BATCH, zoo.SEQ), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids}
    runs = []
    for seed in (1, 2):
        torch.manual_seed(0)
        model = zoo.bert().train()
        handle = random_ltd.apply(model, "1:-1", keep=5, seed=seed)
        if seed == 2 and reseed == "load_state_dict":
            handle.load_state_dict({"seed": 1, "keep": 5})
        elif seed == 2:
            handle.selection = random_ltd.strategies.UniformSelection(1)
        torch.manual_seed(4)
        runs.append(kept_positions(monkeypatch, model, inputs))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
