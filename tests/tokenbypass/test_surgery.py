"""TokenBypass on real layer families, against the unwrapped model and hand-built references."""
from __future__ import annotations

import copy

import pytest
import torch
import zoo

import random_ltd
import random_ltd.tokenbypass
from random_ltd.errors import RandomLTDError
from random_ltd.tokenbypass import bypass_range, causal_lm_token_losses, get_handle, remove

CASES = {case.name: case for case in zoo.CASES}
FAMILIES = ["gpt2-sdpa", "gpt2-eager-pad", "gpt2-sdpa-leftpad", "bert-sdpa-pad", "bert-eager-pad",
            "llama-sdpa-pad", "torch-encoder-causal-seqfirst", "nanogpt-block"]
SPECIAL = (3, 5)


def apply(model, layers="middle", **settings):
    settings.setdefault("vocab_size", zoo.VOCAB)
    return random_ltd.tokenbypass.apply(model, layers, **settings)


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    case = CASES[name]
    model = case.build().train()
    inputs = case.inputs(torch.Generator().manual_seed(seed + 1))
    return case, model, inputs


def valid(inputs) -> torch.Tensor:
    return inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()


def stack_of(model):
    return [layer for _, layer in random_ltd.api.find_layer_stack(model)[1]]


def record_range(model, first: int, last: int) -> dict:
    """Input of the range's first layer and output of its last layer, as the model sees them."""
    seen = {}

    def record_input(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    def record_output(module, args, output):
        seen["out"] = output if torch.is_tensor(output) else output[0]

    layers = stack_of(model)
    layers[first].register_forward_pre_hook(record_input, with_kwargs=True)
    layers[last].register_forward_hook(record_output)
    return seen


def hidden_of(case, seen) -> torch.Tensor:
    hidden = seen["args"][0] if seen["args"] else next(iter(seen["kwargs"].values()))
    return hidden.transpose(0, 1) if case.name.endswith("seqfirst") else hidden


@pytest.mark.parametrize("name", FAMILIES)
def test_keep_equal_to_length_reproduces_the_model(name):
    case, model, inputs = build(name)
    reference = copy.deepcopy(model)
    handle = apply(model, "second", keep=case.seq_len, special_ids=SPECIAL)
    assert handle.indices is None
    loss, expected = case.loss(model, inputs), case.loss(reference, inputs)
    assert torch.equal(handle.indices, torch.arange(case.seq_len).expand(zoo.BATCH, -1))
    loss.backward()
    expected.backward()
    assert torch.equal(loss, expected)
    for (param_name, got), want in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(got.grad, want.grad), param_name


@pytest.mark.parametrize("name", FAMILIES)
def test_dropped_tokens_rejoin_unchanged_and_kept_ones_change(name):
    case, model, inputs = build(name)
    handle = apply(model, "second", keep=case.seq_len // 2, special_ids=SPECIAL)
    seen = record_range(model, handle.drop_layers[0], handle.drop_layers[-1])
    case.loss(model, inputs).backward()
    before, after = hidden_of(case, seen), seen["out"]
    after = after.transpose(0, 1) if name.endswith("seqfirst") else after
    kept = torch.zeros(before.shape[:2], dtype=torch.bool).scatter_(1, handle.indices, True)
    assert after.shape == before.shape
    assert torch.equal(after[~kept], before[~kept])
    assert not torch.equal(after[kept], before[kept])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_selection_follows_importance_specials_and_padding():
    case, model, inputs = build("bert-sdpa-pad")
    handle = apply(model, "middle", keep=6, special_ids=SPECIAL)
    gen = torch.Generator().manual_seed(7)
    handle.importance.scores = torch.rand(zoo.VOCAB, generator=gen)
    case.loss(model, inputs)
    ids, is_valid = inputs["input_ids"], valid(inputs)
    for row in range(zoo.BATCH):
        score = [(float("inf") if int(t) in SPECIAL else handle.importance.scores[int(t)].item())
                 if is_valid[row, p] else float("-inf") for p, t in enumerate(ids[row])]
        order = sorted(range(len(score)), key=lambda p: (-score[p], p))
        assert handle.indices[row].tolist() == sorted(order[:6])
        kept = set(handle.indices[row].tolist())
        specials = [p for p in range(len(score)) if score[p] == float("inf")]
        if len(specials) <= 6:
            assert set(specials) <= kept
        if int(is_valid[row].sum()) >= 6:
            assert all(is_valid[row, p] for p in kept)


def test_padding_goes_first_by_mask_and_by_pad_id():
    case, model, inputs = build("gpt2-eager-pad")
    handle = apply(model, "second", keep=zoo.SEQ, pad_id=7)
    inputs["input_ids"][:, 1] = 7
    lengths = valid(inputs).sum(1)
    handle.set_keep(int(lengths.min()) - 1)
    case.loss(model, inputs)
    for row in range(zoo.BATCH):
        kept = handle.indices[row]
        assert valid(inputs)[row, kept].all() and (inputs["input_ids"][row, kept] != 7).all()


def test_update_learns_from_next_token_losses_and_changes_the_choice():
    case, model, inputs = build("gpt2-sdpa")
    handle = apply(model, "second", keep=4, decay=0.0)
    logits = model(**inputs).logits
    first_choice = handle.indices.clone()
    handle.update(*causal_lm_token_losses(logits, inputs["input_ids"]))
    targets = inputs["input_ids"][:, 1:].reshape(-1)
    assert (handle.importance.scores[targets] != 10.0).all()
    model(**inputs)
    assert not torch.equal(handle.indices, first_choice)


def manual_mask(indices, attention_mask, causal: bool, dtype) -> torch.Tensor:
    """(B, 1, k, k) additive mask built from the kept positions, without the library's gathers."""
    batch, keep = indices.shape
    allowed = torch.ones(batch, keep, keep, dtype=torch.bool)
    if causal:
        allowed &= indices[:, None, :] <= indices[:, :, None]
    if attention_mask is not None:
        allowed &= torch.stack([attention_mask[b, indices[b]].bool() for b in range(batch)])[:, None, :]
    blocked = torch.zeros(batch, keep, keep, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return blocked[:, None]


@pytest.mark.parametrize("name", ["gpt2-eager-pad", "gpt2-sdpa-leftpad", "bert-eager-pad", "llama-sdpa-pad"])
def test_range_equals_its_layers_run_by_hand_on_the_subsequence(name):
    case, model, inputs = build(name)
    reference = copy.deepcopy(model)
    handle = apply(model, "second", keep=9, special_ids=SPECIAL)
    seen = record_range(model, handle.drop_layers[0], handle.drop_layers[-1])
    case.loss(model, inputs)
    indices, full = handle.indices, hidden_of(case, seen)
    hidden = torch.stack([full[b, indices[b]] for b in range(zoo.BATCH)])
    mask = manual_mask(indices, inputs.get("attention_mask"), causal=case.family != "bert", dtype=full.dtype)
    extra = {}
    if case.family == "llama":
        extra["position_embeddings"] = reference.model.rotary_emb(hidden, position_ids=indices)
        extra["position_ids"] = indices
    for index in handle.drop_layers:
        out = stack_of(reference)[index](hidden, attention_mask=mask, **extra)
        hidden = out if torch.is_tensor(out) else out[0]
    for b in range(zoo.BATCH):
        rows = valid(inputs)[b, indices[b]]
        torch.testing.assert_close(seen["out"][b, indices[b]][rows], hidden[b][rows])


def test_eval_never_bypasses_and_training_does():
    case, model, inputs = build("bert-sdpa-pad")
    reference = copy.deepcopy(model).eval()
    handle = apply(model, "middle", keep=4)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference(**inputs).logits)
    assert handle.indices is None
    model.train()
    reference.train()
    assert not torch.equal(model(**inputs).logits, reference(**inputs).logits)


def test_state_dict_keys_unchanged_and_remove_restores_classes():
    _, model, _ = build("gpt2-sdpa")
    keys, classes = list(model.state_dict()), [type(m) for m in model.modules()]
    handle = apply(model, "second", keep=4)
    assert list(model.state_dict()) == keys and get_handle(model) is handle
    remove(model)
    assert [type(m) for m in model.modules()] == classes and get_handle(model) is None
    with pytest.raises(RandomLTDError):
        remove(model)


def test_named_ranges_follow_the_paper():
    assert bypass_range("middle", 24) == list(range(11, 23))  # 1-based L12..L23
    assert bypass_range("second", 24) == list(range(1, 23))  # 1-based L2..L23
    assert bypass_range("2:5", 6) == [2, 3, 4]
    with pytest.raises(RandomLTDError, match="contiguous"):
        bypass_range([1, 3], 6)


def test_refuses_double_wrapping_and_missing_input_ids():
    case, model, inputs = build("gpt2-sdpa")
    random_ltd.apply(model, "1:2")
    with pytest.raises(RandomLTDError, match="already wrapped"):
        apply(model, "second")
    random_ltd.remove(model)
    apply(model, "second", keep=4)
    with pytest.raises(RandomLTDError, match="already applied"):
        apply(model, "second")
    with pytest.raises(RandomLTDError, match="input_ids"):
        model(inputs_embeds=torch.randn(zoo.BATCH, zoo.SEQ, 32))
    with pytest.raises(RandomLTDError, match="vocab_size"):
        random_ltd.tokenbypass.apply(zoo.TorchEncoderLM(), "second")


def train_losses(steps: int, resume_at: int | None = None) -> list[float]:
    """A few AdamW steps with TokenBypass; optionally save everything and resume mid-way."""
    case, model, _ = build("gpt2-sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    handle = apply(model, "second", keep=8, decay=0.5)
    losses = []
    for step in range(steps):
        if step == resume_at:
            saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), handle.state_dict()))
            _, model, _ = build("gpt2-sdpa", seed=99)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
            handle = apply(model, "second", keep=1)
            model.load_state_dict(saved[0])
            optimizer.load_state_dict(saved[1])
            handle.load_state_dict(saved[2])
        inputs = case.inputs(torch.Generator().manual_seed(100 + step))
        logits = model(**inputs).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, zoo.VOCAB),
                                                 inputs["input_ids"][:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        handle.update(*causal_lm_token_losses(logits, inputs["input_ids"]))
        losses.append(loss.item())
    return losses


def test_resumed_training_matches_uninterrupted():
    assert train_losses(4) == train_losses(4, resume_at=2)


def test_driver_sets_keep_counts_layer_tokens_and_saves_the_importance():
    case, model, inputs = build("gpt2-sdpa")
    handle = apply(model, "second", decay=0.5)
    driver = random_ltd.Driver(handle, random_ltd.ConstantKeep(zoo.SEQ, 8), batch_size=zoo.BATCH, seq_len=zoo.SEQ)
    assert driver.before_step() == 8 and handle.keep == 8
    logits = model(**inputs).logits
    handle.update(*causal_lm_token_losses(logits, inputs["input_ids"]))
    assert driver.after_step() == zoo.BATCH * (2 * 8 + 2 * zoo.SEQ)  # layers 1, 2 keep 8 of 16
    saved = driver.state_dict()
    _, fresh_model, _ = build("gpt2-sdpa")
    fresh = apply(fresh_model, "second")
    resumed = random_ltd.Driver(fresh, random_ltd.ConstantKeep(zoo.SEQ, 8), batch_size=zoo.BATCH, seq_len=zoo.SEQ)
    resumed.load_state_dict(saved)
    assert torch.equal(fresh.importance.scores, handle.importance.scores) and fresh.keep == 8


def test_repr_names_the_range_and_the_kept_length():
    _, model, _ = build("gpt2-sdpa")
    handle = apply(model, "second", keep=4)
    assert "layers=[1, 2] of 4" in repr(handle) and "keep=4" in repr(handle)


def test_remove_is_all_or_nothing():
    _, model, _ = build("gpt2-sdpa")
    handle = apply(model, "second", keep=4)
    layers = stack_of(model)
    layers[2].__class__ = type("ShardedBlock", (type(layers[2]),), {})  # what fully_shard does to a layer
    hooks = dict(model._forward_pre_hooks)
    with pytest.raises(RandomLTDError, match="changed after"):
        remove(model)
    assert get_handle(model) is handle and dict(model._forward_pre_hooks) == hooks
    assert type(layers[1]).__qualname__.startswith("RandomLTD[")
