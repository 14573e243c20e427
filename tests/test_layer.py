"""The dropping layer against references, for every registered layer family (tests/zoo.py)."""
from __future__ import annotations

import copy
import inspect

import pytest
import torch
from zoo import CASES, Case

import random_ltd
from random_ltd import adapters, ops
from random_ltd.layer import layer_state

torch.set_num_threads(1)


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _run(case: Case, model, seed=0):
    inputs = case.inputs(torch.Generator().manual_seed(seed))
    model.zero_grad(set_to_none=True)
    loss = case.loss(model, inputs)
    loss.backward()
    return loss.detach(), _grads(model)


def test_every_registered_family_has_a_case():
    families = {adapter.name for adapter in adapters.base._BY_KEY.values()}
    families |= {adapter.name for _, adapter in adapters.base._PREDICATES}
    assert families - {"roberta", "xlm_roberta"} <= {case.family for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_full_keep_in_training_equals_unwrapped(case):
    torch.manual_seed(0)
    model = case.build().train()
    reference = copy.deepcopy(model)
    random_ltd.apply(model, keep=case.seq_len)
    loss, grads = _run(case, model)
    ref_loss, ref_grads = _run(case, reference)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert torch.equal(grads[name], ref_grads[name]), name


@pytest.mark.parametrize("case", CASES, ids=str)
def test_eval_never_drops(case, monkeypatch):
    torch.manual_seed(0)
    model = case.build().eval()
    reference = copy.deepcopy(model)
    random_ltd.apply(model, keep=3)
    drawn = _spy(monkeypatch)
    with torch.no_grad():
        inputs = case.inputs(torch.Generator().manual_seed(1))
        assert torch.equal(case.loss(model, inputs), case.loss(reference, inputs))
    assert drawn == []


def _spy(monkeypatch):
    drawn = []
    original = ops.keep_top

    def spy(*args, **kwargs):
        indices = original(*args, **kwargs)
        drawn.append(indices)
        return indices

    monkeypatch.setattr(ops, "keep_top", spy)
    return drawn


def _capture_calls(model, handle):
    calls = []
    stack = dict(model.named_modules())
    for wrapped in handle.layers:
        layer = stack[wrapped.name]

        def pre(module, args, kwargs, record=calls):
            record.append({"layer": module, "args": args, "kwargs": dict(kwargs)})

        def post(module, args, kwargs, output, record=calls):
            index = layer_state(module).adapter.output_index
            record[-1]["output"] = output if isinstance(output, torch.Tensor) else output[index]

        layer.register_forward_pre_hook(pre, with_kwargs=True)
        layer.register_forward_hook(post, with_kwargs=True)
    return calls


def _take(value, name, adapter, b, idx, seq_len, batch):
    """Independent per-sequence reference gather (plain indexing, one sequence at a time)."""
    if value is None or name in adapter.caches:
        return None
    if name == adapter.use_cache:
        return False
    if name in adapter.position_pairs:
        return tuple(part[min(b, part.shape[0] - 1)][idx].unsqueeze(0) for part in value)
    if name in adapter.shared_position_pairs:  # unbatched (other + s, d): the other stream's rows stay
        return tuple(torch.cat([part[: part.shape[0] - seq_len], part[part.shape[0] - seq_len :][idx]])
                     for part in value)
    if not isinstance(value, torch.Tensor):
        return value
    if name in adapter.passthrough:  # per-sequence conditioning (B, ...), e.g. a diffusion timestep
        return value[b : b + 1] if value.dim() and value.shape[0] == batch else value
    if name in adapter.key_biases:  # (B*heads, 1, s)
        heads = value.shape[0] // batch
        return value[b * heads : (b + 1) * heads][..., idx]
    if name == "src_mask":
        return value[idx][:, idx]
    if name in adapter.masks:
        mask = value[min(b, value.shape[0] - 1)][..., idx]
        return (mask[..., idx, :] if mask.shape[-2] == seq_len else mask).unsqueeze(0)
    if name in adapter.query_masks:  # (B, *heads, q, s_other): queries are gathered when q spans the sequence
        mask = value[min(b, value.shape[0] - 1)]
        return (mask[..., idx, :] if mask.shape[-2] == seq_len else mask).unsqueeze(0)
    if name in adapter.positions or name in adapter.padding_masks or name == "src_key_padding_mask":
        return value[min(b, value.shape[0] - 1)][idx].unsqueeze(0)
    return value


def _reference(call, b, idx, seq_len, batch_first, batch):
    layer = call["layer"]
    state = layer_state(layer)
    signature = inspect.signature(state.original_class.forward)
    signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    bound = signature.bind(*call["args"], **call["kwargs"])
    hidden_name = state.adapter.hidden or next(iter(signature.parameters))
    var_kw = [p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
    for name, value in list(bound.arguments.items()):
        if name == hidden_name:
            bound.arguments[name] = value[b : b + 1, idx] if batch_first else value[idx, b : b + 1]
        elif var_kw and name == var_kw[0]:
            bound.arguments[name] = {k: _take(v, k, state.adapter, b, idx, seq_len, batch) for k, v in value.items()}
        else:
            bound.arguments[name] = _take(value, name, state.adapter, b, idx, seq_len, batch)
    out = state.original_class.forward(layer, *bound.args, **bound.kwargs)
    out = out if isinstance(out, torch.Tensor) else out[state.adapter.output_index]
    return out[0] if batch_first else out[:, 0]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_dropping_matches_reference_on_subsequence(case, monkeypatch):
    torch.manual_seed(0)
    model = case.build().train()
    keep = case.seq_len // 2
    handle = random_ltd.apply(model, keep=keep, seed=123)
    drawn = _spy(monkeypatch)
    calls = _capture_calls(model, handle)
    inputs = case.inputs(torch.Generator().manual_seed(2))
    case.loss(model, inputs)
    assert len(drawn) == len(calls) == len(handle.layers)
    valid = inputs.get("attention_mask")
    for call, indices in zip(calls, drawn, strict=True):
        state = layer_state(call["layer"])
        batch_first = state.adapter.batch_first is None or state.adapter.batch_first(call["layer"])
        hidden = call["args"][0] if call["args"] else call["kwargs"][state.adapter.hidden]
        hidden = hidden if batch_first else hidden.transpose(0, 1)
        output = call["output"] if batch_first else call["output"].transpose(0, 1)
        if state.adapter.one_draw_per_batch:  # one draw serves every sequence (Flux's shared rotary table)
            assert indices.shape == (1, keep)
            indices = indices.expand(hidden.shape[0], -1)
        assert indices.shape == (hidden.shape[0], keep)
        for b in range(hidden.shape[0]):
            idx = indices[b]
            dropped = torch.ones(case.seq_len, dtype=torch.bool)
            dropped[idx] = False
            assert torch.equal(output[b, dropped], hidden[b, dropped]), "dropped tokens must pass unchanged"
            expected = _reference(call, b, idx, case.seq_len, batch_first, hidden.shape[0])
            rows = torch.ones(keep, dtype=torch.bool) if valid is None else valid[b, idx].bool()
            torch.testing.assert_close(output[b, idx][rows], expected[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_heavy_padding_small_keep_stays_finite(case):
    torch.manual_seed(0)
    model = case.build().train()
    handle = random_ltd.apply(model, seed=7)
    for draw in range(6):
        handle.set_keep(2 + draw % 3)
        inputs = case.inputs(torch.Generator().manual_seed(100 + draw))
        if "attention_mask" in inputs:
            inputs["attention_mask"][:, :] = 0
            inputs["attention_mask"][:, -(2 + draw % 4):] = 1  # rows with 2..5 valid tokens
        model.zero_grad(set_to_none=True)
        loss = case.loss(model, inputs)
        loss.backward()
        assert torch.isfinite(loss), draw
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (draw, name)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_parameter_gets_a_gradient_and_keys_are_kept(case):
    torch.manual_seed(0)
    model = case.build().train()
    keys = list(model.state_dict().keys())
    classes = [type(m) for m in model.modules()]
    n_params = sum(p.numel() for p in model.parameters())
    # Parameters the model itself never uses for its output: BERT's pooler, the text stream of the
    # last double-stream block of a Flux without single-stream blocks.
    unused_by_model = _unused(case, copy.deepcopy(model))
    last_double = case.name == "flux-double" and "transformer.transformer_blocks.3."
    assert all("pooler" in n or (last_double and n.startswith(last_double)) for n in unused_by_model)
    random_ltd.apply(model, keep=case.seq_len // 2)
    assert list(model.state_dict().keys()) == keys
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert _unused(case, model) == unused_by_model
    random_ltd.remove(model)
    assert [type(m) for m in model.modules()] == classes


def _unused(case: Case, model) -> set[str]:
    _, grads = _run(case, model)
    return {name for name, p in model.named_parameters() if p.requires_grad and name not in grads}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_tiny_model_trains_at_half_keep(case):
    torch.manual_seed(0)
    model = case.build().train()
    handle = random_ltd.apply(model, keep=case.seq_len // 2, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    inputs = case.inputs(torch.Generator().manual_seed(5))
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = case.loss(model, inputs)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert handle.keep == case.seq_len // 2


DECODERS = ("gpt2", "llama", "moe", "Block", "gpt_neox", "gptj", "opt", "gpt_bigcode", "gpt_neo", "falcon", "bloom")
CAUSAL = [case for case in CASES if case.family in DECODERS or "causal" in case.name]


@pytest.mark.parametrize("case", CAUSAL, ids=str)
def test_dropping_keeps_causal_models_causal(case):
    """With the same draws, changing a token never changes predictions at earlier positions."""
    torch.manual_seed(0)
    model = case.build().train()
    random_ltd.apply(model, keep=case.seq_len // 2, seed=9)
    inputs = case.inputs(torch.Generator().manual_seed(3))
    inputs.pop("attention_mask", None)
    rng_state = torch.get_rng_state()
    before = model(**inputs).logits
    changed = inputs["input_ids"].clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 97
    torch.set_rng_state(rng_state)  # the same draws
    after = model(**{**inputs, "input_ids": changed}).logits
    torch.testing.assert_close(after[:, :10], before[:, :10], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after[:, 10:], before[:, 10:])


BATCHED = [case for case in CASES if "packed" not in case.name]


@pytest.mark.parametrize("case", BATCHED, ids=str)
def test_dropping_stays_inside_each_sequence(case):
    """With the same draws, changing one sequence of the batch changes nothing in the others
    (ModernBERT, MoE routers and every other family see the batch at once)."""
    torch.manual_seed(0)
    model = case.build().train()
    random_ltd.apply(model, keep=case.seq_len // 2, seed=11)
    inputs = case.inputs(torch.Generator().manual_seed(6))
    rng_state = torch.get_rng_state()
    before = model(**inputs).logits
    name = "pixel_values" if "pixel_values" in inputs else "input_ids"
    changed = inputs[name].clone()
    changed[1] = torch.randn_like(changed[1].float()) if name == "pixel_values" else (changed[1] + 1) % 97
    torch.set_rng_state(rng_state)  # the same draws
    after = model(**{**inputs, name: changed}).logits
    assert torch.equal(after[[0, 2]], before[[0, 2]])
    assert not torch.equal(after[1], before[1])
