"""Span routing (TREAD) through ``random_ltd.apply(model, routes=...)``, against references.

The reference runs the original layers of a route, one after the other, on the subsequence
gathered by plain indexing, sequence by sequence, and stacked into one batch (``test_layer._take``,
the independent gather that checks random-LTD's layer), from the hidden states the route's first layer received: the
routed model equals it bit for bit on CPU.
"""
from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import zoo
from test_layer import _take

import random_ltd
from random_ltd import accounting, ops, span
from random_ltd.layer import layer_state

torch.set_num_threads(1)
CASES = {case.name: case for case in zoo.CASES}
FAMILIES = ["llama-sdpa-pad", "llama-sdpa-packed", "gpt2-eager-pad", "bert-sdpa-pad", "torch-encoder-pad",
            "torch-encoder-causal-seqfirst", "vit-sdpa", "nanogpt-block"]
TWO_ROUTES = [(0.5, 0, 1), (0.75, 2, 3)]  # adjacent routes covering the whole 4-layer stack


def _build(name: str):
    torch.manual_seed(0)
    case = CASES[name]
    return case, case.build().train()


def _grads(model) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _step_on(case, model, inputs):
    model.zero_grad(set_to_none=True)
    loss = case.loss(model, inputs)
    loss.backward()
    return loss.detach(), _grads(model)


def _step(case, model, seed=0):
    return _step_on(case, model, case.inputs(torch.Generator().manual_seed(seed)))


def _spy_draws(monkeypatch) -> list[torch.Tensor]:
    drawn = []
    original = ops.keep_top
    monkeypatch.setattr(ops, "keep_top", lambda *args: drawn.append(original(*args)) or drawn[-1])
    return drawn


def _capture(model, handle) -> list[dict]:
    """Each wrapped layer's call as the model made it (full-length masks), and its output."""
    calls = []
    modules = dict(model.named_modules())
    for wrapped in handle.layers:
        layer = modules[wrapped.name]
        layer.register_forward_pre_hook(lambda m, args, kwargs: calls.append(
            {"layer": m, "args": args, "kwargs": dict(kwargs)}), with_kwargs=True)
        layer.register_forward_hook(lambda m, args, kwargs, out: calls[-1].update(
            output=out if isinstance(out, torch.Tensor) else out[0]), with_kwargs=True)
    return calls


def _bound(call):
    state = layer_state(call["layer"])
    signature = inspect.signature(state.original_class.forward)
    signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    bound = signature.bind(*call["args"], **call["kwargs"])
    return state, bound, state.adapter.hidden or next(iter(signature.parameters))


def _batch_first(call) -> bool:
    state = layer_state(call["layer"])
    return state.adapter.batch_first is None or state.adapter.batch_first(call["layer"])


def _hidden(call, value=None) -> torch.Tensor:
    _, bound, hidden_name = _bound(call)
    hidden = bound.arguments[hidden_name] if value is None else value
    return hidden if _batch_first(call) else hidden.transpose(0, 1)


def _original_row_by_row(call, tokens: torch.Tensor, indices: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The original layer called once per sequence, with ``call``'s arguments gathered to ``indices``."""
    batch = indices.shape[0]
    outputs = []
    for b in range(batch):
        state, bound, hidden_name = _bound(call)
        arguments = dict(bound.arguments)
        for name, value in arguments.items():
            if name == hidden_name:
                row = tokens[b : b + 1]
                arguments[name] = row if _batch_first(call) else row.transpose(0, 1)
            elif isinstance(value, dict):  # **kwargs
                arguments[name] = {key: _take(item, key, state.adapter, b, indices[b], seq_len, batch)
                                   for key, item in value.items()}
            else:
                arguments[name] = _take(value, name, state.adapter, b, indices[b], seq_len, batch)
        bound.arguments.update(arguments)
        out = state.original_class.forward(call["layer"], *bound.args, **bound.kwargs)
        outputs.append(_hidden(call, out if isinstance(out, torch.Tensor) else out[0]))
    return torch.cat(outputs)


def _original_on(call, kept: torch.Tensor, indices: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The original layer on the kept tokens, its inputs gathered sequence by sequence by plain
    indexing (``test_layer._take``) and stacked into one batch: one call, as the routed layer makes
    (batched matmuls, eager's and SDPA's, may sum a batch of one differently on some CPUs).
    Sequence by sequence where a gathered input is not per sequence."""
    state, bound, hidden_name = _bound(call)
    arguments = {}
    for name, value in bound.arguments.items():
        if name == hidden_name:
            arguments[name] = kept if _batch_first(call) else kept.transpose(0, 1)
        elif isinstance(value, dict):  # **kwargs
            arguments[name] = {key: _stacked(item, key, state, indices, seq_len) for key, item in value.items()}
        else:
            arguments[name] = _stacked(value, name, state, indices, seq_len)
        gathered = arguments[name].values() if isinstance(arguments[name], dict) else [arguments[name]]
        if any(item is _PER_SEQUENCE for item in gathered):
            return _original_row_by_row(call, kept, indices, seq_len)
    bound.arguments.update(arguments)
    out = state.original_class.forward(call["layer"], *bound.args, **bound.kwargs)
    return _hidden(call, out if isinstance(out, torch.Tensor) else out[0])


_PER_SEQUENCE = object()


def _stacked(value, name, state, indices, seq_len):
    batch = indices.shape[0]
    rows = [_take(value, name, state.adapter, b, indices[b], seq_len, batch) for b in range(batch)]
    if not isinstance(rows[0], (torch.Tensor, tuple)) or rows[0] is value:
        return rows[0]
    if name == "src_mask":  # one (k, k) mask per sequence: not a batch of them
        return _PER_SEQUENCE
    if isinstance(rows[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*rows, strict=True))
    return torch.cat(rows)


def _check_route(calls: list[dict], indices: torch.Tensor, valid: torch.Tensor | None):
    """The route's last output: kept rows equal the original layers on the subsequence, the rest the route's input."""
    start = _hidden(calls[0])
    batch, seq_len = start.shape[:2]
    tokens = torch.stack([start[b, indices[b]] for b in range(batch)])
    for call in calls:
        tokens = _original_on(call, tokens, indices, seq_len)
    for call in calls[1:]:
        assert _hidden(call).shape[:2] == indices.shape, "inner layers run on the kept tokens only"
    end = _hidden(calls[-1], calls[-1]["output"])
    assert end.shape == start.shape
    for b in range(batch):
        dropped = torch.ones(seq_len, dtype=torch.bool)
        dropped[indices[b]] = False
        assert torch.equal(end[b, dropped], start[b, dropped]), "routed-around tokens keep their pre-route state"
        rows = torch.ones(indices.shape[1], dtype=torch.bool) if valid is None else valid[b, indices[b]].bool()
        assert torch.equal(end[b, indices[b]][rows], tokens[b][rows])


# per-layer inputs that differ between a route's layers (sliding and full masks) or per-key biases (ALiBi)
MORE_INPUTS = ["gemma2-sliding-eager-pad", "falcon-alibi-eager-pad", "modernbert-sdpa-pad", "gpt-neox-eager-pad"]


@pytest.mark.parametrize("name", FAMILIES + MORE_INPUTS)
def test_each_route_equals_its_original_layers_on_the_gathered_subsequence(name, monkeypatch):
    case, model = _build(name)
    handle = random_ltd.apply(model, routes=TWO_ROUTES, seed=3)
    drawn = _spy_draws(monkeypatch)
    calls = _capture(model, handle)
    inputs = case.inputs(torch.Generator().manual_seed(2))
    case.loss(model, inputs)
    assert [d.shape[1] for d in drawn] == [case.seq_len // 2, case.seq_len * 3 // 4], "one draw per route"
    valid = inputs.get("attention_mask")
    _check_route(calls[:2], drawn[0], valid)
    _check_route(calls[2:], drawn[1], valid)


@pytest.mark.parametrize("name", ["llama-sdpa-pad", "gpt2-eager-pad", "bert-sdpa-pad", "torch-encoder-pad",
                                  "dit", "pixart-masks", "sd3", "sd35-dual-attention"])
def test_a_route_equals_the_same_subset_dropped_layer_by_layer_bit_for_bit(name, monkeypatch):
    """Carrying the subset through the span computes exactly what gathering it in every layer does."""
    case, model = _build(name)
    reference = copy.deepcopy(model)
    random_ltd.apply(model, routes=[(0.5, 1, 2)], seed=3)
    drawn = _spy_draws(monkeypatch)
    torch.manual_seed(7)
    loss, grads = _step(case, model)
    (indices,) = drawn
    random_ltd.apply(reference, "1:3", keep=indices.shape[1], strategy=lambda position, tokens, keep, _: indices)
    ref_loss, ref_grads = _step(case, reference)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for key in grads:
        assert torch.equal(grads[key], ref_grads[key]), key


@pytest.mark.parametrize("name", ["mixtral-sdpa-pad", "qwen2-moe-eager-pad"])
def test_a_routed_moe_decoder_s_load_balancing_loss_covers_the_tokens_each_router_saw(name, monkeypatch):
    """With padding and router logits, the aux loss of a route equals per-layer dropping of the same subset."""
    case, model = _build(name)
    reference = copy.deepcopy(model)
    handle = random_ltd.apply(model, routes=[(0.5, 1, 2)], seed=3)
    drawn = _spy_draws(monkeypatch)
    inputs = case.inputs(torch.Generator().manual_seed(0))
    output = model(**inputs, labels=inputs["input_ids"], output_router_logits=True)
    (indices,) = drawn
    assert handle.router_loss.routed_tokens == [zoo.BATCH * zoo.SEQ] + [indices.numel()] * 2 + [zoo.BATCH * zoo.SEQ]
    random_ltd.apply(reference, "1:3", keep=indices.shape[1], strategy=lambda position, tokens, keep, _: indices)
    expected = reference(**inputs, labels=inputs["input_ids"], output_router_logits=True)
    assert torch.equal(output.aux_loss, expected.aux_loss) and torch.equal(output.loss, expected.loss)


@pytest.mark.parametrize("name", FAMILIES)
def test_full_keep_equals_the_unwrapped_model(name):
    case, model = _build(name)
    reference = copy.deepcopy(model)
    random_ltd.apply(model, routes=[(1.0, 0, 1), (case.seq_len, 2, 3)], seed=3)
    torch.manual_seed(1)
    loss, grads = _step(case, model)
    torch.manual_seed(1)
    ref_loss, ref_grads = _step(case, reference)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for key in grads:
        assert torch.equal(grads[key], ref_grads[key]), key


@pytest.mark.parametrize("name", ["llama-sdpa-pad", "bert-sdpa-pad", "torch-encoder-pad"])
def test_eval_never_routes(name, monkeypatch):
    case, model = _build(name)
    reference = copy.deepcopy(model).eval()
    random_ltd.apply(model, routes=TWO_ROUTES, seed=3)
    model.eval()
    drawn = _spy_draws(monkeypatch)
    inputs = case.inputs(torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(case.loss(model, inputs), case.loss(reference, inputs))
    assert drawn == []


@pytest.mark.parametrize("name", FAMILIES)
def test_every_parameter_gets_a_gradient_and_the_model_is_restored(name):
    case, model = _build(name)
    keys = list(model.state_dict())
    classes = [type(m) for m in model.modules()]
    random_ltd.apply(model, routes=TWO_ROUTES)
    assert list(model.state_dict()) == keys
    _, grads = _step(case, model)
    missing = {n for n, p in model.named_parameters() if p.requires_grad and n not in grads and "pooler" not in n}
    assert not missing
    assert all(torch.isfinite(g).all() for g in grads.values())
    random_ltd.remove(model)
    assert [type(m) for m in model.modules()] == classes


@pytest.mark.parametrize("name", ["gpt2-sdpa", "llama-sdpa-pad"])
def test_a_tiny_language_model_trains_with_routes_from_the_command_line_form(name):
    case, model = _build(name)
    random_ltd.apply(model, routes=span.parse_routes("0.5:1:2"), seed=0)
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


@pytest.mark.parametrize("name", ["llama-sdpa-pad", "gpt2-eager-pad", "bert-eager-pad", "torch-encoder-pad",
                                  "manual-softmax-bidir-pad"])
def test_heavy_padding_and_a_small_keep_stay_finite(name):
    """A route may keep only padding of a sequence: no attention row may be left without a key."""
    case, model = _build(name)
    random_ltd.apply(model, routes=[(0.15, 0, 1), (2, 2, 3)], seed=7)
    for draw in range(4):
        inputs = case.inputs(torch.Generator().manual_seed(100 + draw))
        inputs["attention_mask"][:, :] = 0
        inputs["attention_mask"][:, -(2 + draw):] = 1  # rows with 2..5 valid tokens
        loss, grads = _step_on(case, model, inputs)
        assert torch.isfinite(loss), draw
        assert all(torch.isfinite(grad).all() for grad in grads.values()), draw


@pytest.mark.parametrize("name", ["llama-sdpa", "bert-sdpa"])
def test_recorded_hidden_states_inside_a_route_are_the_kept_tokens(name):
    case, model = _build(name)
    random_ltd.apply(model, routes=[(0.5, 0, 2)], seed=1)
    inputs = case.inputs(torch.Generator().manual_seed(0))
    shapes = [tuple(h.shape) for h in model(**inputs, output_hidden_states=True).hidden_states]
    full, kept = (zoo.BATCH, zoo.SEQ, 32), (zoo.BATCH, zoo.SEQ // 2, 32)
    assert shapes == [full, kept, kept, full, full]  # the embeddings, then each layer's output
    with torch.no_grad():
        shapes = [tuple(h.shape) for h in model.eval()(**inputs, output_hidden_states=True).hidden_states]
    assert shapes == [full] * 5


def test_the_kept_length_follows_each_forward_s_sequence_length(monkeypatch):
    case, model = _build("llama-sdpa")
    random_ltd.apply(model, routes=[(0.5, 1, 1), (0.7, 2, 3)], seed=3)
    drawn = _spy_draws(monkeypatch)
    for seq_len in (16, 10, 3):
        model(input_ids=torch.randint(0, zoo.VOCAB, (2, seq_len)))
    assert [d.shape for d in drawn] == [(2, 8), (2, 11), (2, 5), (2, 7), (2, 1), (2, 2)]


def test_draws_follow_the_seed_and_torch_s_default_stream(monkeypatch):
    case, model = _build("llama-sdpa")
    inputs = case.inputs(torch.Generator().manual_seed(0))
    drawn = _spy_draws(monkeypatch)

    def draws(seed, stream_seed):
        handle = random_ltd.apply(model, routes=[(0.5, 1, 2)], seed=seed)
        drawn.clear()
        torch.manual_seed(stream_seed)
        case.loss(model, inputs), case.loss(model, inputs)
        handle.remove()
        return list(drawn)

    first, again = draws(1, 0), draws(1, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True)), "reproducible"
    assert not torch.equal(first[0], first[1]), "each forward draws anew"
    assert not torch.equal(first[0], draws(2, 0)[0]), "another apply seed, other tokens"
    assert not torch.equal(first[0], draws(1, 1)[0]), "another default stream, other tokens"


# --- gradient checkpointing (tests/test_replay.py's scenarios) ---

def _replay_grads(build, checkpointing: bool, scenario: str, routes=((0.5, 1, 2),)) -> dict:
    import test_replay

    torch.manual_seed(0)
    model = build(False if checkpointing else None).train()
    random_ltd.apply(model, routes=list(routes), seed=11)
    torch.manual_seed(1)
    test_replay.SCENARIOS[scenario](model)
    return _grads(model)


def _dropout_gpt2(reentrant):
    config = zoo.gpt2().config
    config.resid_pdrop = config.attn_pdrop = 0.1  # dropout after the draw: a replay must consume the stream alike
    model = type(zoo.gpt2())(config)
    if reentrant is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    return model


def _models():
    import test_replay

    return {**test_replay.MODELS, "gpt2-dropout-hf": _dropout_gpt2}


@pytest.mark.parametrize("scenario", ["sum-of-three", "interleaved"])
@pytest.mark.parametrize("model", ["llama-hf", "gpt2-hf", "torch-checkpoint", "gpt2-dropout-hf"])
def test_non_reentrant_checkpointing_equals_no_checkpointing(model, scenario):
    build = _models()[model]
    reference = _replay_grads(build, False, scenario, TWO_ROUTES)
    replayed = _replay_grads(build, True, scenario, TWO_ROUTES)
    assert replayed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(replayed[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)


def test_a_replay_that_skipped_the_draw_would_change_the_gradients(monkeypatch):
    """The comparison above can fail: a first layer reusing its route on replay leaves the stream behind."""
    build = _models()["gpt2-dropout-hf"]
    reference = _replay_grads(build, False, "sum-of-three")
    draw = span.SpanRouting._draw

    def once(self, route, tokens):
        cache = self.__dict__.setdefault("_once", {})
        key = tokens.untyped_storage()  # a replay gets its forward's input back
        if key not in cache:
            cache[key] = draw(self, route, tokens)
        return cache[key]

    monkeypatch.setattr(span.SpanRouting, "_draw", once)
    replayed = _replay_grads(build, True, "sum-of-three")
    assert any(not torch.allclose(replayed[key], reference[key]) for key in reference)


def test_reentrant_checkpointing_of_a_route_is_refused():
    case, model = _build("llama-sdpa")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    random_ltd.apply(model, routes=[(0.5, 1, 2)])
    with pytest.raises(random_ltd.RandomLTDError, match="reentrant"):
        case.loss(model, case.inputs(torch.Generator().manual_seed(0)))


def test_each_routed_block_compiled_equals_eager():
    """Per-block ``torch.compile``: the routes' context lookups are graph breaks, the numbers eager's."""
    torch._dynamo.reset()
    case, eager = _build("llama-sdpa")
    compiled = copy.deepcopy(eager)
    random_ltd.apply(eager, routes=[(0.5, 1, 2)], seed=5)
    handle = random_ltd.apply(compiled, routes=[(0.5, 1, 2)], seed=5)
    modules = dict(compiled.named_modules())
    for wrapped in handle.layers:
        modules[wrapped.name].compile(backend="aot_eager")
    try:
        for step in range(2):
            torch.manual_seed(10 + step)
            ref_loss, ref_grads = _step(case, eager, step)
            torch.manual_seed(10 + step)
            loss, grads = _step(case, compiled, step)
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
            for key in ref_grads:
                torch.testing.assert_close(grads[key], ref_grads[key], rtol=1e-4, atol=1e-5, msg=key)
    finally:
        torch._dynamo.reset()


# --- bad input: a clear error at apply, naming the argument, the model untouched ---

def _fingerprint(model):
    return [type(m) for m in model.modules()], list(model.state_dict()), len(model._forward_pre_hooks)


@pytest.mark.parametrize("routes, match", [
    ([(0.5, 1, 4)], "routes.*last_layer 4, outside the stack of 4"),
    ([(0.5, -5, 2)], "routes.*first_layer -5, outside"),
    ([(0.5, 2, 1)], "routes.*starts at layer 2, after its last layer 1"),
    ([(0.5, 0, 2), (0.7, 2, 3)], "routes.*0-2 and 2-3 overlap"),
    ([(0.5, 1, 3), (0.7, 0, 1)], "routes.*0-1 and 1-3 overlap"),
    ([(0.0, 1, 2)], r"routes.*keep 0.0.*\(0, 1\]"),
    ([(1.5, 1, 2)], r"routes.*keep 1.5.*\(0, 1\]"),
    ([(-0.5, 1, 2)], r"routes.*keep -0.5"),
    ([(float("nan"), 1, 2)], r"routes.*keep nan"),
    ([(1, 1, 2)], "routes.*int 1.*1.0"),
    ([(0, 1, 2)], "routes.*count must be at least 2"),
    ([(True, 1, 2)], "routes.*keep True"),
    ([("0.5", 1, 2)], "routes.*keep '0.5'"),
    ([(0.5, 1.0, 2)], "routes.*first_layer 1.0, not an integer"),
    ([(0.5, 1)], r"routes.*\(keep, first_layer, last_layer\)"),
    ([], "routes must be a non-empty list"),
    ("0.5:1:2", "routes must be a non-empty list"),
])
def test_a_bad_route_is_a_clear_error_and_the_model_is_untouched(routes, match):
    _, model = _build("llama-sdpa")
    before = _fingerprint(model)
    with pytest.raises(random_ltd.RandomLTDError, match=match):
        random_ltd.apply(model, routes=routes)
    assert _fingerprint(model) == before and random_ltd.get_handle(model) is None
    random_ltd.apply(model, routes=[(0.5, 1, 2)])  # nothing left behind


@pytest.mark.parametrize("keep", [0.5, 1.0, 2, 7, 0.0, 1.5, -0.5, float("nan"), 1, 0, -2, True, "0.5", None])
def test_a_route_s_keep_follows_the_one_capacity_rule_of_accounting(keep):
    """Span's keep and Mixture-of-Depths' capacity are one rule (``accounting.capacity_problem``): a
    route refuses exactly what the planner refuses, with the same reason after its own prefix."""
    problem = accounting.capacity_problem(keep)
    if problem is None:
        assert span.check_keep_fraction(keep, (keep, 1, 2)) == accounting.check_capacity(keep)
        return
    with pytest.raises(random_ltd.RandomLTDError) as caught:
        span.check_keep_fraction(keep, (keep, 1, 2))
    assert not isinstance(caught.value, random_ltd.ConfigError)
    assert str(caught.value) == f"routes: route {(keep, 1, 2)!r} has keep {keep!r}: {problem}"
    with pytest.raises(random_ltd.ConfigError) as planned:
        accounting.check_capacity(keep)
    assert planned.value.message == f"{problem}, got {keep!r}"


@pytest.mark.parametrize("options, named", [
    ({"keep": 8}, "keep"),
    ({"layers": "1:3"}, "layers"),
    ({"strategy": random_ltd.UniformSelection(0)}, "strategy"),
    ({"protect_positions": (0,)}, "protect_positions"),
    ({"protect_ids": (3,)}, "protect_ids"),
    ({"keep_prefix_tokens": True}, "keep_prefix_tokens"),
])
def test_options_that_mean_nothing_beside_routes_are_refused_by_name(options, named):
    _, model = _build("llama-sdpa")
    before = _fingerprint(model)
    with pytest.raises(random_ltd.RandomLTDError, match=f"routes= cannot be combined with {named}"):
        random_ltd.apply(model, routes=[(0.5, 1, 2)], **options)
    assert _fingerprint(model) == before and random_ltd.get_handle(model) is None


def test_a_model_without_a_token_stream_to_route_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    before = _fingerprint(model)
    with pytest.raises(random_ltd.RandomLTDError, match="found no transformer layer"):
        random_ltd.apply(model, routes=[(0.5, 0, 1)])
    assert _fingerprint(model) == before


def test_span_routing_set_on_a_handle_must_route_exactly_its_wrapped_layers():
    _, model = _build("llama-sdpa")
    handle = random_ltd.apply(model, "1:3", keep=6, seed=0)
    with pytest.raises(random_ltd.RandomLTDError, match=r"layers \[1, 2, 3\].*wrapped layers \[1, 2\]"):
        handle.strategy = span.SpanRouting(span.check_routes([(0.5, 1, 3)], 4), seed=0)
    assert isinstance(handle.strategy, random_ltd.UniformSelection)
    handle.strategy = span.SpanRouting(span.check_routes([(0.5, 1, 2)], 4), seed=0)
    assert handle.drop_layers == [1, 2]


def test_set_keep_is_refused_and_the_state_round_trips():
    _, model = _build("llama-sdpa")
    handle = random_ltd.apply(model, routes=TWO_ROUTES, seed=4)
    with pytest.raises(random_ltd.RandomLTDError, match=r"set_keep\(8\).*SpanRouting"):
        handle.set_keep(8)
    handle.set_keep(None)
    assert handle.state_dict() == {"seed": 4, "routes": [(0.5, 0, 1), (0.75, 2, 3)], "keep": None}
    other = random_ltd.apply(_build("llama-sdpa")[1], routes=TWO_ROUTES, seed=9)
    other.load_state_dict(handle.state_dict())
    assert other.seed == 4
    different = random_ltd.apply(_build("llama-sdpa")[1], routes=[(0.5, 1, 2)], seed=9)
    with pytest.raises(random_ltd.RandomLTDError, match="saved routes"):
        different.load_state_dict(handle.state_dict())


# --- the pure helpers ---

def test_parse_routes_reads_the_command_line_form():
    assert span.parse_routes("0.5:2:5, 0.7:7:10") == [(0.5, 2, 5), (0.7, 7, 10)]
    assert span.parse_routes("64:1:-2") == [(64, 1, -2)]
    for text in ("0.5:2", "half:1:2", "", "0.5:1:2:3"):
        with pytest.raises(random_ltd.RandomLTDError, match="route"):
            span.parse_routes(text)


def test_kept_length_and_layer_tokens():
    assert [span.SpanRoute(0.29, 0, 0).kept_length(s) for s in (100, 3, 1)] == [29, 1, 1]
    assert span.SpanRoute(5, 0, 0).kept_length(3) == 3
    routes = span.check_routes([(0.7, 7, 10), (0.5, 3, 6)], 12)
    assert [(r.first, r.last) for r in routes] == [(3, 6), (7, 10)]
    # 12 layers x 256 tokens, less 4 layers x 128 and 4 layers x 77 routed around
    assert span.routed_layer_tokens(routes, 256, 12) == 12 * 256 - 4 * 128 - 4 * 77


def test_the_routing_page_blocks_run(tmp_path, monkeypatch):
    """docs/routing.md's Python blocks, in order, in one namespace (their asserts are the page's claims)."""
    page = Path(__file__).resolve().parents[1] / "docs" / "routing.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_routing"}
    for number, code in enumerate(blocks):
        exec(compile(code, f"docs/routing.md block {number}", "exec"), namespace)
    assert random_ltd.get_handle(namespace["model"]) is None


def test_masks_positions_and_tokens_are_gathered_once_per_route(monkeypatch):
    """A route over three layers gathers mask, positions and rotary table, splits and merges as often as one layer."""
    counts = {"gather_sequence": 0, "gather_mask": 0, "split_tokens": 0, "merge_tokens": 0}
    for function in counts:
        original = getattr(ops, function)

        def counting(*args, _original=original, _name=function, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(ops, function, counting)

    def counted(routes):
        case, model = _build("llama-sdpa-pad")
        random_ltd.apply(model, routes=routes, seed=1)
        for function in counts:
            counts[function] = 0
        case.loss(model, case.inputs(torch.Generator().manual_seed(0)))
        return dict(counts)

    one, three = counted([(0.5, 1, 1)]), counted([(0.5, 1, 3)])
    assert one["gather_sequence"] > 0 and one["gather_mask"] > 0 and three == one, (one, three)
    assert three["split_tokens"] == three["merge_tokens"] == 1


@pytest.mark.parametrize("name", ["flux-double", "flux-single"])
def test_flux_blocks_which_keep_one_subset_per_batch_are_refused_by_routes(name):
    _, model = _build(name)
    before = _fingerprint(model)
    with pytest.raises(random_ltd.RandomLTDError, match="one subset per batch"):
        random_ltd.apply(model, routes=[(0.5, 1, 2)], seed=0)
    assert _fingerprint(model) == before
