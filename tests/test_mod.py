"""Mixture-of-Depths (``random_ltd.mod``) against references.

The reference runs the original layer on the subsequence gathered by plain indexing, sequence by
sequence, stacked into one call (``test_span._original_on``, built on ``test_layer._take``), from
the hidden states the routed layer received, and forms ``x + r * (y - x)`` with the router weight ``r`` read from the
layer's own router: the routed model equals it bit for bit on CPU.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
import zoo
from test_span import _bound, _capture, _hidden, _original_on, _spy_draws

import random_ltd
import random_ltd.layer
from random_ltd import accounting, mod
from random_ltd.api import find_layer_stack

torch.set_num_threads(1)
CASES = {case.name: case for case in zoo.CASES}
FAMILIES = ["llama-sdpa-pad", "llama-sdpa-packed", "gpt2-eager-pad", "bert-sdpa-pad", "torch-encoder-pad",
            "torch-encoder-causal-seqfirst", "vit-sdpa", "nanogpt-block"]


def _build(name: str):
    torch.manual_seed(0)
    case = CASES[name]
    return case, case.build().train()


def _hidden_size(case, model) -> int:
    """The width of the layers' hidden states, read from one unwrapped forward."""
    _, members = find_layer_stack(model)
    sizes = []
    hook = members[0][1].register_forward_pre_hook(
        lambda m, args, kwargs: sizes.append(_first_tensor(args, kwargs).shape[-1]), with_kwargs=True)
    case.loss(model, case.inputs(torch.Generator().manual_seed(0)))
    hook.remove()
    return sizes[0]


def _first_tensor(args, kwargs) -> torch.Tensor:
    return next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.is_floating_point())


def _apply(case, model, **options):
    options.setdefault("hidden_size", _hidden_size(case, model))
    return mod.apply(model, **options)


def _router_weights(handle, call, position: int) -> torch.Tensor:
    """``(B, s)`` sigmoid router weights of the tokens a routed layer received."""
    router = handle.strategy.routers[position]
    return torch.sigmoid(router(_hidden(call)).squeeze(-1))


def _check_weighted(call, weights: torch.Tensor, indices: torch.Tensor, valid: torch.Tensor | None):
    """Kept rows are ``x + r * (original(x_kept) - x)``; every other row is its input, bit for bit."""
    start = _hidden(call)
    batch, seq_len = start.shape[:2]
    kept = torch.stack([start[b, indices[b]] for b in range(batch)])
    weight = torch.stack([weights[b, indices[b]] for b in range(batch)]).unsqueeze(-1)
    expected = kept + weight * (_original_on(call, kept, indices, seq_len) - kept)
    end = _hidden(call, call["output"])
    for b in range(batch):
        dropped = torch.ones(seq_len, dtype=torch.bool)
        dropped[indices[b]] = False
        assert torch.equal(end[b, dropped], start[b, dropped]), "tokens the router passes over are the identity"
        rows = torch.ones(indices.shape[1], dtype=torch.bool) if valid is None else valid[b, indices[b]].bool()
        assert torch.equal(end[b, indices[b]][rows], expected[b][rows])


@pytest.mark.parametrize("name", FAMILIES)
def test_kept_tokens_equal_the_original_layer_on_the_subsequence_scaled_by_the_router(name, monkeypatch):
    case, model = _build(name)
    handle = _apply(case, model, layers=[1, 2], capacity=0.25)
    drawn = _spy_draws(monkeypatch)
    calls = _capture(model, handle)
    inputs = case.inputs(torch.Generator().manual_seed(2))
    case.loss(model, inputs)  # with gradients: a no-grad call with a cache is generation
    assert [d.shape[1] for d in drawn] == [case.seq_len // 4] * 2, "top-k at the capacity, in each routed layer"
    valid = inputs.get("attention_mask")
    for call, indices, position in zip(calls, drawn, (1, 2), strict=True):
        weights = _router_weights(handle, call, position)
        keys = weights if valid is None else weights.masked_fill(~valid.bool(), -1.0)  # padding chosen last
        assert torch.equal(indices, keys.topk(indices.shape[1]).indices.sort(dim=1).values), "expert choice"
        _check_weighted(call, weights, indices, valid)


@pytest.mark.parametrize("name", ["llama-sdpa-pad", "gpt2-eager-pad", "torch-encoder-causal-seqfirst"])
def test_full_capacity_is_the_weighted_residual_form_on_every_token(name):
    case, model = _build(name)
    handle = _apply(case, model, layers=[1], capacity=1.0)
    calls = _capture(model, handle)
    case.loss(model, case.inputs(torch.Generator().manual_seed(2)))
    (call,) = calls
    start = _hidden(call)
    weight = _router_weights(handle, call, 1).unsqueeze(-1)
    layer = call["layer"]
    state, bound, _ = _bound(call)
    for name in state.adapter.caches:  # the routed call filled the cache already
        if name in bound.arguments:
            bound.arguments[name] = None
    original = state.original_class.forward(layer, *bound.args, **bound.kwargs)
    original = _hidden(call, original if isinstance(original, torch.Tensor) else original[0])
    assert torch.equal(_hidden(call, call["output"]), start + weight * (original - start))


def test_raw_logit_weight_multiplies_by_the_router_score(monkeypatch):
    case, model = _build("llama-sdpa-pad")
    handle = _apply(case, model, layers=[1], capacity=0.5, weight="logit")
    drawn = _spy_draws(monkeypatch)
    calls = _capture(model, handle)
    case.loss(model, case.inputs(torch.Generator().manual_seed(2)))
    logits = handle.strategy.routers[1](_hidden(calls[0])).squeeze(-1)
    _check_weighted(calls[0], logits, drawn[0], None)


def test_gradients_reach_every_router_and_the_aux_loss_trains_it():
    case, model = _build("llama-sdpa-pad")
    handle = _apply(case, model, capacity=0.25)
    inputs = case.inputs(torch.Generator().manual_seed(2))
    case.loss(model, inputs).backward()
    for position, router in handle.strategy.routers.items():
        assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0, position
    model.zero_grad(set_to_none=True)
    case.loss(model, inputs)
    handle.aux_loss().backward()
    assert all(router.weight.grad.abs().sum() > 0 for router in handle.strategy.routers.values())
    assert set(handle.strategy.aux_losses) == {1, 3}


def test_aux_loss_is_the_bce_of_the_logits_against_top_k_membership(monkeypatch):
    case, model = _build("gpt2-eager-pad")
    handle = _apply(case, model, layers=[2], capacity=0.5)
    drawn = _spy_draws(monkeypatch)
    calls = _capture(model, handle)
    inputs = case.inputs(torch.Generator().manual_seed(2))
    case.loss(model, inputs)
    logits = handle.strategy.routers[2](_hidden(calls[0])).squeeze(-1)
    valid = inputs["attention_mask"].bool()
    targets = torch.zeros_like(logits).scatter(1, drawn[0], 1.0)
    losses = [F.binary_cross_entropy_with_logits(logits[b][valid[b]], targets[b][valid[b]], reduction="sum")
              for b in range(len(valid))]
    torch.testing.assert_close(handle.aux_loss(), sum(losses) / valid.sum(), rtol=1e-6, atol=0)
    assert all(targets[b][valid[b]].sum() == min(valid[b].sum(), 8) for b in range(len(valid))), "padding last"


def test_routers_are_parameters_with_stable_names_and_remove_returns_them():
    case, model = _build("llama-sdpa-pad")
    before = copy.deepcopy(model.state_dict())
    handle = _apply(case, model, layers="1::2")
    names = set(model.state_dict()) - set(before)
    assert names == {f"model.layers.{i}.mod_router.{p}" for i in (1, 3) for p in ("weight", "bias")}
    assert {id(p) for r in handle.strategy.routers.values() for p in r.parameters()} <= \
        {id(p) for p in model.parameters()}, "the optimizer sees the routers"
    restored = copy.deepcopy(model)
    restored.load_state_dict(model.state_dict())  # saved and loaded under the same names
    routers = mod.remove(model)
    assert set(routers) == {"model.layers.1", "model.layers.3"}
    assert set(model.state_dict()) == set(before)
    assert all(type(layer).__name__ == "LlamaDecoderLayer" for layer in model.model.layers)
    assert random_ltd.get_handle(model) is None


def _decisions(monkeypatch) -> list[torch.Tensor]:
    """Each causal routing call's chosen positions, as a boolean row per sequence."""
    made = []
    original = mod.MixtureOfDepths.select_causal

    def spy(self, layer, tokens):
        chosen = original(self, layer, tokens)
        ran = torch.ones_like(chosen.indices, dtype=torch.bool) if chosen.valid is None else chosen.valid
        mask = torch.zeros(tokens.shape[:2], dtype=torch.bool).scatter(1, chosen.indices, ran)
        made.append((layer.position, mask))
        return chosen

    monkeypatch.setattr(mod.MixtureOfDepths, "select_causal", spy)
    return made


def _route_about_half(model, handle, ids: torch.Tensor) -> None:
    """Random router weights, each bias set so that about half the tokens of a forward on ``ids`` run
    its layer (hidden states of some families sit far from zero)."""
    logits = {}
    hooks = []
    for position, router in handle.strategy.routers.items():
        torch.nn.init.normal_(router.weight, std=1.0)
        torch.nn.init.zeros_(router.bias)
        hooks.append(router.register_forward_hook(lambda m, args, out, p=position: logits.setdefault(p, out)))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        for position, router in handle.strategy.routers.items():
            router.bias.fill_(-float(logits[position].float().median()) + 1e-4)


GENERATING = ["llama-sdpa", "llama-eager-leftpad", "gpt2-eager-pad", "gptj-eager", "opt-eager-pad", "gemma-eager",
              "gpt-bigcode-eager", "qwen2-moe-eager-pad", "falcon-rotary-sdpa-pad", "falcon-alibi-sdpa",
              "bloom-alibi-eager-pad", "gpt-neo-local-eager"]


@pytest.mark.parametrize("name", GENERATING)
def test_generation_with_a_cache_routes_as_the_full_forward_does(name, monkeypatch):
    """Token by token with a cache, teacher-forced: the same routing decisions and logits as one full forward."""
    case, model = _build(name)
    handle = _apply(case, model, capacity=0.25)
    model.eval()
    ids = torch.randint(1, zoo.VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    _route_about_half(model, handle, ids)
    made = _decisions(monkeypatch)
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        whole = {position: mask for position, mask in made}
        made.clear()
        output = model(input_ids=ids[:, :5], use_cache=True)
        steps = [output.logits]
        for t in range(5, 12):  # token by token, teacher-forced, with the cache
            output = model(input_ids=ids[:, t : t + 1], past_key_values=output.past_key_values, use_cache=True)
            steps.append(output.logits)
    for position in (1, 3):
        stepwise = torch.cat([mask for p, mask in made if p == position], dim=1)
        assert torch.equal(stepwise, whole[position]), position
        assert 0 < int(stepwise.sum()) < 12, "some tokens skip the layer, some run it"
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    cache = output.past_key_values
    assert cache.get_seq_length(1) == int(whole[1].sum()), "a skipped token leaves no key in that layer's cache"


def test_evaluation_routes_causally_a_token_runs_the_layer_when_its_logit_is_positive(monkeypatch):
    case, model = _build("llama-sdpa-pad")
    handle = _apply(case, model, layers=[1], capacity=0.25)
    torch.nn.init.normal_(handle.strategy.routers[1].weight, std=1.0)  # about half the tokens run the layer
    model.eval()
    calls = _capture(model, handle)
    ids = torch.randint(0, zoo.VOCAB, (1, zoo.SEQ), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    logits = handle.strategy.routers[1](_hidden(calls[0])).squeeze(-1)
    chosen = (logits > 0).nonzero()[:, 1].unsqueeze(0)
    assert 0 < chosen.shape[1] < zoo.SEQ
    _check_weighted(calls[0], torch.sigmoid(logits), chosen, None)


UNEVEN = ["llama-sdpa", "llama-sdpa-pad", "llama-eager-leftpad", "gpt2-eager-pad", "bert-sdpa", "bert-eager-pad",
          "bloom-alibi-eager-pad", "falcon-alibi-sdpa", "gpt-neo-local-eager", "qwen2-moe-eager-pad"]


def _output(model, inputs: dict) -> torch.Tensor:
    out = model(**{name: value for name, value in inputs.items() if name != "labels"})
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("name", UNEVEN)
def test_a_batch_whose_sequences_route_differently_evaluates_as_each_sequence_alone(name, monkeypatch):
    """Causal routing lets each sequence run its own number of tokens: the layer runs the most any
    sequence chose, the others' extra tokens masked as keys and left unchanged."""
    case, model = _build(name)
    handle = _apply(case, model, capacity=0.25)
    model.eval()
    inputs = case.inputs(torch.Generator().manual_seed(2))
    _route_about_half(model, handle, inputs["input_ids"][:1])
    made = _decisions(monkeypatch)
    with torch.no_grad():
        batched = _output(model, inputs)
        counts = [mask.sum(dim=1) for _, mask in made]
        alone = [_output(model, {k: v[b : b + 1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
                 for b in range(batched.shape[0])]
    assert any(len(set(count.tolist())) > 1 for count in counts), "the sequences route differently"
    valid = inputs.get("attention_mask", torch.ones(batched.shape[:2], dtype=torch.long)).bool()
    for b, expected in enumerate(alone):
        torch.testing.assert_close(batched[b][valid[b]], expected[0][valid[b]], rtol=1e-5, atol=1e-5)


def test_a_moe_model_s_evaluation_router_loss_counts_the_tokens_that_ran():
    """Every token runs every routed layer: the evaluation's router loss and loss are the unwrapped model's."""
    case, model = _build("qwen2-moe-eager-pad")
    reference = copy.deepcopy(model).eval()
    handle = _apply(case, model, capacity=0.25)
    for router in handle.strategy.routers.values():
        torch.nn.init.zeros_(router.weight)
        torch.nn.init.constant_(router.bias, 30.0)  # r = sigmoid(30) = 1 in float32: the unrouted layer
    model.eval()
    inputs = case.inputs(torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(**inputs), reference(**inputs)
    assert ours.aux_loss is not None
    torch.testing.assert_close(ours.aux_loss, theirs.aux_loss)
    torch.testing.assert_close(ours.loss, theirs.loss)


class _ParityRouting:
    """Routes by the token ids the model was last called with: an even id runs every routed layer, an odd
    one skips it (through ``MixtureOfDepths.logits``, so each sequence's choice is fixed by its ids)."""

    def __init__(self, monkeypatch, decoded_tokens_run: bool = False):
        self.ids, self.decoded_tokens_run = None, decoded_tokens_run
        monkeypatch.setattr(mod.MixtureOfDepths, "logits", lambda strategy, layer, tokens: self.logits(tokens))

    def logits(self, tokens):
        runs = self.ids[:, -tokens.shape[1]:] % 2 == 0
        if self.decoded_tokens_run and tokens.shape[1] == 1:
            runs = torch.ones_like(runs)
        return torch.where(runs, 1.0, -1.0).to(tokens.dtype) + 0 * tokens[..., 0]

    def __call__(self, model, ids, **kwargs):
        self.ids = ids
        return model(input_ids=ids, **kwargs)


@pytest.mark.parametrize("name", ["llama-sdpa", "gpt2-eager-pad"])
def test_a_sequence_that_runs_every_token_beside_one_that_does_not_evaluates_as_alone(name, monkeypatch):
    case, model = _build(name)
    _apply(case, model)
    model.eval()
    routing = _ParityRouting(monkeypatch)
    ids = torch.stack([torch.arange(2, 26, 2), torch.arange(1, 13)])  # all even; every other
    with torch.no_grad():
        batched = routing(model, ids, use_cache=False).logits
        alone = [routing(model, ids[b : b + 1], use_cache=False).logits for b in range(2)]
    for b in range(2):
        torch.testing.assert_close(batched[b], alone[b][0], rtol=1e-5, atol=1e-5)


def test_a_routed_layer_that_no_prompt_token_ran_decodes_with_the_keys_it_then_holds(monkeypatch):
    case, model = _build("llama-eager-leftpad")
    _apply(case, model)
    model.eval()
    routing = _ParityRouting(monkeypatch)
    ids = torch.tensor([[1, 3, 5, 7, 2, 9, 4, 6]])  # the prompt of 4 runs no routed layer
    with torch.no_grad():
        full = routing(model, ids, use_cache=False).logits
        output = routing(model, ids[:, :4], use_cache=True)
        steps = [output.logits]
        for t in range(4, 8):
            routing.ids = ids[:, : t + 1]
            output = model(input_ids=ids[:, t : t + 1], past_key_values=output.past_key_values, use_cache=True)
            steps.append(output.logits)
        with pytest.raises(random_ltd.RandomLTDError, match="chunked prefill"):
            routing.ids = torch.cat([ids, ids], dim=1)
            model(input_ids=ids[:, :3], past_key_values=output.past_key_values, use_cache=True)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_beam_search_over_an_unevenly_routed_prompt_is_refused(monkeypatch):
    case, model = _build("llama-sdpa")
    _apply(case, model)
    model.eval()
    routing = _ParityRouting(monkeypatch, decoded_tokens_run=True)  # only the prompt's fillers can refuse
    ids = torch.stack([torch.arange(2, 14, 2), torch.arange(1, 7)])
    original = model.forward

    def forward(*args, **kwargs):  # generate passes the whole sequence so far through its inputs
        routing.ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else routing.ids
        return original(*args, **kwargs)

    model.forward = forward
    with torch.no_grad(), pytest.raises(random_ltd.RandomLTDError, match="route differently"):
        model.generate(ids, max_new_tokens=3, num_beams=2, do_sample=False, attention_mask=torch.ones_like(ids))


def test_the_record_lives_and_dies_with_its_cache(monkeypatch):
    import gc
    import weakref
    case, model = _build("llama-sdpa")
    _apply(case, model)
    model.eval()
    routing = _ParityRouting(monkeypatch)
    ids = torch.tensor([[2, 3, 4, 5, 6, 7], [2, 5, 4, 7, 6, 9]])
    with torch.no_grad():
        cache = routing(model, ids, use_cache=True).past_key_values
    copied = copy.deepcopy(cache)
    copied.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(cache.__dict__["_random_ltd_held_keys"][1].positions, torch.tensor([[0, 2, 4], [0, 2, 4]]))
    assert torch.equal(copied.__dict__["_random_ltd_held_keys"][1].positions, torch.tensor([[0, 2, 4], [0, 2, 4]]))
    cache.reset()
    assert cache.__dict__["_random_ltd_held_keys"] == {}, "a reset cache holds no keys"
    alive = weakref.ref(copied)
    gc.disable()
    try:
        del copied
        assert alive() is None, "freed as soon as it is dropped, not at the next garbage collection"
    finally:
        gc.enable()


def test_generation_refuses_a_batch_whose_sequences_route_differently():
    case, model = _build("llama-sdpa-pad")
    handle = _apply(case, model, layers=[1])
    ids = torch.randint(1, zoo.VOCAB, (zoo.BATCH, zoo.SEQ), generator=torch.Generator().manual_seed(3))
    model.eval()
    _route_about_half(model, handle, ids[:1])
    with torch.no_grad(), pytest.raises(random_ltd.RandomLTDError, match="route differently"):
        model.generate(ids, max_new_tokens=4, do_sample=False)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_gradients_equal_uncheckpointed(reentrant):
    case, model = _build("llama-sdpa-pad")
    reference = copy.deepcopy(model)
    _apply(case, model, capacity=0.25)
    _apply(case, reference, capacity=0.25)
    reference.load_state_dict(model.state_dict())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    inputs = case.inputs(torch.Generator().manual_seed(2))
    grads = []
    for each in (model, reference):
        each.zero_grad(set_to_none=True)
        case.loss(each, inputs).backward()
        grads.append({n: p.grad for n, p in each.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("mod_router" in n for n in grads[0])
    for name in grads[1]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def test_the_aux_loss_under_non_reentrant_checkpointing_gives_the_uncheckpointed_gradients():
    case, model = _build("llama-sdpa-pad")
    handle = _apply(case, model, capacity=0.25)
    reference = copy.deepcopy(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inputs = case.inputs(torch.Generator().manual_seed(2))
    grads = []
    for each in (model, reference):
        case.loss(each, inputs)  # a forward before the one whose backward runs: the replay must not mix them
        each.zero_grad(set_to_none=True)
        loss = case.loss(each, inputs)
        (loss + random_ltd.get_handle(each).aux_loss()).backward()
        grads.append({n: p.grad for n, p in each.named_parameters() if p.grad is not None})
    assert handle is random_ltd.get_handle(model)
    for name in grads[1]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def test_the_aux_loss_refuses_to_be_silently_gradient_free_under_reentrant_checkpointing():
    case, model = _build("llama-sdpa-pad")
    handle = _apply(case, model, capacity=0.25)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    case.loss(model, case.inputs(torch.Generator().manual_seed(2)))
    with pytest.raises(random_ltd.RandomLTDError, match="use_reentrant=False"):
        handle.aux_loss()


def test_sequence_parallel_hidden_states_are_refused_clearly(monkeypatch):
    case, model = _build("llama-sdpa-pad")
    _apply(case, model, capacity=0.25)
    monkeypatch.setattr(random_ltd.layer, "_sharded_layout", lambda hidden, batch_first: object())
    with pytest.raises(random_ltd.RandomLTDError, match="sequence-parallel"):
        case.loss(model, case.inputs(torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("name", ["llama-sdpa", "gpt2-sdpa"])
def test_each_routed_block_compiles_fullgraph_and_equals_eager(name):
    torch._dynamo.reset()
    case, eager = _build(name)
    handle = _apply(case, eager, capacity=0.25, skip_padding=False)
    compiled = copy.deepcopy(eager)
    modules = dict(compiled.named_modules())
    for wrapped in handle.layers:
        modules[wrapped.name].compile(fullgraph=True, backend="aot_eager")
    inputs = case.inputs(torch.Generator().manual_seed(1))
    results = []
    for each in (eager, compiled):
        each.zero_grad(set_to_none=True)
        loss = case.loss(each, inputs)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in each.named_parameters() if p.grad is not None}))
    torch._dynamo.reset()
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for key, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][key], grad, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("options, message", [
    ({"capacity": 0.0}, "^capacity: .*fraction must lie in"),
    ({"capacity": 1.5}, "fraction must lie in"),
    ({"capacity": float("nan")}, "fraction must lie in"),
    ({"capacity": 1}, "write 1.0"),
    ({"capacity": "half"}, "fraction in"),
    ({"weight": "softmax"}, "router weight is one of"),
    ({"layers": [1, 1]}, "routes a layer twice"),
    ({"layers": [1, -3]}, "routes a layer twice"),
    ({"layers": [9]}, "out of range"),
    ({"hidden_size": 0}, "hidden_size"),
])
def test_bad_input_is_a_clear_error_and_the_model_is_untouched(options, message):
    case, model = _build("llama-sdpa-pad")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(random_ltd.RandomLTDError, match=message):
        mod.apply(model, **options)
    assert model.state_dict().keys() == before.keys()
    assert all(type(layer).__name__ == "LlamaDecoderLayer" and type(layer).__module__.startswith("transformers")
               for layer in model.model.layers)
    assert random_ltd.get_handle(model) is None


@pytest.mark.parametrize("name", ["torch-encoder-pad", "torch-encoder-causal-seqfirst", "nanogpt-block",
                                  "manual-softmax-bidir-pad"])
def test_without_a_config_the_router_width_is_read_from_the_layer_s_norms(name):
    case, model = _build(name)
    width = _hidden_size(case, model)
    handle = mod.apply(model)
    assert {router.in_features for router in handle.strategy.routers.values()} == {width}
    case.loss(model, case.inputs(torch.Generator().manual_seed(1))).backward()


class _TwoWidths(torch.nn.Module):
    """A block whose norms disagree on the width (one on the tokens, one on a head of 8)."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(16)
        self.head_norm = torch.nn.LayerNorm(8)
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x):
        return x + self.proj(self.norm(x))


def test_norms_that_disagree_on_the_width_ask_for_hidden_size_and_leave_the_model_untouched():
    model = torch.nn.Sequential(*[_TwoWidths() for _ in range(4)])
    keys = set(model.state_dict())
    random_ltd.register_layer(_TwoWidths)
    try:
        with pytest.raises(random_ltd.RandomLTDError, match=r"hidden size.*\[8, 16\].*pass hidden_size="):
            mod.apply(model)
        assert set(model.state_dict()) == keys and random_ltd.get_handle(model) is None
        assert {router.in_features for router in mod.apply(model, hidden_size=16).strategy.routers.values()} == {16}
    finally:
        random_ltd.remove(model)
        random_ltd.unregister_layer(_TwoWidths)


def test_a_router_of_the_wrong_width_is_a_clear_error_at_the_first_forward():
    case, model = _build("nanogpt-block")
    mod.apply(model, hidden_size=_hidden_size(case, model) + 1)
    with pytest.raises(random_ltd.RandomLTDError, match=r"router.*takes \d+ features.*receives \d+.*hidden_size="):
        case.loss(model, case.inputs(torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("first", ["random-ltd", "mod"])
def test_mod_on_a_model_already_routed_is_refused_and_leaves_it_untouched(first):
    case, model = _build("llama-sdpa-pad")
    handle = random_ltd.apply(model, keep=8, seed=1) if first == "random-ltd" else mod.apply(model)
    keys = set(model.state_dict())
    with pytest.raises(random_ltd.RandomLTDError, match="already applied"):
        mod.apply(model)
    assert set(model.state_dict()) == keys and random_ltd.get_handle(model) is handle
    with pytest.raises(random_ltd.RandomLTDError):
        handle.set_keep(4) if first == "mod" else mod.remove(model)


def test_capacity_length_floors_the_fraction_and_caps_counts():
    assert [accounting.capacity_length(c, 100) for c in (0.125, 0.29, 1.0, 0.001, 7, 500)] == [12, 29, 100, 1, 7, 100]


def test_layer_tokens_count_the_capacity_in_routed_layers():
    tokens = accounting.mod_layer_tokens_per_step(64, 2, 4, [1, 3], 0.125)
    assert tokens == 2 * (2 * 64 + 2 * 8)
    assert accounting.mod_layer_tokens_per_step(64, 2, 4, 2, 1.0) == 2 * 4 * 64


def test_flops_add_each_router_s_d_to_one_map_over_every_token():
    plain = accounting.flops_per_step(64, 2, 4, 32, kept=8, drop_layers=[1, 3], vocab_size=97)
    routed = accounting.mod_flops_per_step(64, 2, 4, 32, routed_layers=[1, 3], capacity=0.125, vocab_size=97)
    assert routed - plain == 3 * 2 * 2 * (2 * 64 * 32)  # backward x3, batch, two routers, 2 s d each
    full = accounting.mod_flops_per_step(64, 1, 4, 32, routed_layers=2, capacity=1.0, backward=False)
    assert full == accounting.flops_per_step(64, 1, 4, 32, backward=False) + 2 * (2 * 64 * 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["llama-sdpa-pad", "gpt2-eager-pad", "bert-sdpa-pad", "vit-sdpa"])
def test_a_routed_layer_s_forward_and_backward_do_not_sync_the_host(name):
    """``set_sync_debug_mode("error")`` raises at any device-to-host synchronisation (as tests/test_sync.py)."""
    case, model = _build(name)
    model = model.cuda()
    handle = _apply(case, model, layers=[1], capacity=0.25)
    calls = _capture(model, handle)
    inputs = {key: value.cuda() for key, value in case.inputs(torch.Generator().manual_seed(1)).items()}
    case.loss(model, inputs)
    (call,) = calls
    args = tuple(_detached(a) for a in call["args"])
    kwargs = {key: _detached(value) for key, value in call["kwargs"].items()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        output = call["layer"](*args, **kwargs)
        output = output if isinstance(output, torch.Tensor) else output[0]
        (output.float().square().mean() + handle.aux_loss()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(output).all()


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach().requires_grad_(value.is_floating_point())
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value


def test_aux_loss_coef_adds_the_aux_loss_to_the_model_s_loss_as_moe_models_do():
    case, model = _build("llama-sdpa-pad")
    reference = copy.deepcopy(model)
    handle = _apply(case, model, capacity=0.25, aux_loss_coef=0.1)
    _apply(case, reference, capacity=0.25)
    reference.load_state_dict(model.state_dict())
    inputs = case.inputs(torch.Generator().manual_seed(2))
    output = model(**inputs, labels=inputs["input_ids"])
    expected = reference(**inputs, labels=inputs["input_ids"]).loss
    assert torch.equal(output.mod_aux_loss, handle.aux_loss())
    assert torch.equal(output.loss, expected + 0.1 * handle.aux_loss())
    model.eval()
    with torch.no_grad():
        evaluated = model(**{k: v[:1, :2] for k, v in inputs.items()}, labels=inputs["input_ids"][:1, :2])
    assert not hasattr(evaluated, "mod_aux_loss"), "evaluation adds no stale training loss"
    mod.remove(model)
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_random_ltd_remove_takes_the_routers_and_hooks_away_too():
    case, model = _build("llama-sdpa-pad")
    keys = set(model.state_dict())
    _apply(case, model, aux_loss_coef=0.1)
    random_ltd.remove(model)
    assert set(model.state_dict()) == keys
    assert not model._forward_hooks and not model._forward_pre_hooks


@pytest.mark.parametrize("name", ["qwen2-sliding-eager", "mistral-sliding-sdpa-pad"])
def test_sliding_window_models_generate_exactly_with_a_cache_that_keeps_every_key(name):
    """Their default cache keeps a window of keys, counted in cached tokens: refused. ``DynamicCache()``
    keeps every key and the model's mask applies the window in original positions."""
    from transformers import DynamicCache
    case, model = _build(name)
    handle = _apply(case, model, capacity=0.25)
    model.eval()
    ids = torch.randint(1, zoo.VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    _route_about_half(model, handle, ids)
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        with pytest.raises(random_ltd.RandomLTDError, match="keeps a window of keys.*DynamicCache"):
            output = model(input_ids=ids[:, :5], use_cache=True)
            for t in range(5, 12):
                output = model(input_ids=ids[:, t : t + 1], past_key_values=output.past_key_values, use_cache=True)
        output = model(input_ids=ids[:, :5], use_cache=True, past_key_values=DynamicCache())
        steps = [output.logits]
        for t in range(5, 12):
            output = model(input_ids=ids[:, t : t + 1], past_key_values=output.past_key_values, use_cache=True)
            steps.append(output.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_a_cache_records_the_positions_a_routed_layer_holds_and_follows_reordering_but_refuses_cropping():
    case, model = _build("llama-eager-leftpad")
    handle = _apply(case, model, capacity=0.25)
    model.eval()
    ids = torch.randint(1, zoo.VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    _route_about_half(model, handle, ids)
    with torch.no_grad():
        cache = model(input_ids=ids[:, :8].expand(2, -1), use_cache=True).past_key_values
    records = cache.__dict__["_random_ltd_held_keys"]
    assert set(records) == {1, 3} and all(record.seen == 8 for record in records.values())
    for position, record in records.items():
        assert record.positions.shape == (2, cache.get_seq_length(position)), "one position per key held"
    marked = {position: record.positions * torch.tensor([[1], [100]]) for position, record in records.items()}
    for position in records:
        records[position] = dataclasses.replace(records[position], positions=marked[position])
    cache.reorder_cache(torch.tensor([1, 0]))
    assert all(torch.equal(records[p].positions, marked[p].flip(0)) for p in records), "rows follow the beams"
    with pytest.raises(random_ltd.RandomLTDError, match="cropping a cache"):
        cache.crop(4)


@pytest.mark.parametrize("name", GENERATING)
def test_generate_with_the_cache_picks_the_tokens_of_full_forwards(name):
    """transformers' ``generate`` (greedy, KV cache) against a loop of full forwards without a cache. Eager
    attention, ALiBi and padding masks hand a routed layer keys in original positions at every step: only
    those its cache holds are kept."""
    case, model = _build(name)
    handle = _apply(case, model, capacity=0.25)
    model.eval()
    ids = torch.randint(1, zoo.VOCAB, (1, 6), generator=torch.Generator().manual_seed(4))
    _route_about_half(model, handle, torch.randint(1, zoo.VOCAB, (1, 14), generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8, output_logits=True,
                                   return_dict_in_generate=True)
        expected, logits = ids, []
        eos = model.generation_config.eos_token_id  # min_new_tokens keeps generate from choosing it
        for _ in range(8):
            logits.append(model(input_ids=expected, use_cache=False).logits[:, -1])
            allowed = logits[-1].index_fill(-1, torch.tensor(eos if isinstance(eos, list) else [eos]), -float("inf")) \
                if eos is not None else logits[-1]
            expected = torch.cat([expected, allowed.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated.sequences, expected)
    torch.testing.assert_close(torch.stack(generated.logits), torch.stack(logits), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama-sdpa", "falcon-alibi-sdpa", "gpt-neo-local-eager", "bloom-alibi-eager-pad"])
def test_a_layer_every_token_skips_returns_its_input_in_the_layer_s_output_structure(name):
    case, model = _build(name)
    handle = _apply(case, model, layers=[1])
    torch.nn.init.zeros_(handle.strategy.routers[1].weight)
    torch.nn.init.constant_(handle.strategy.routers[1].bias, -1.0)  # every logit negative: every token skips
    model.eval()
    calls = _capture(model, handle)
    layer = dict(model.named_modules())[handle.layers[0].name]
    structures = []
    layer.register_forward_hook(lambda m, args, kwargs, out: structures.append(type(out)), with_kwargs=True)
    inputs = {key: value[:1] for key, value in case.inputs(torch.Generator().manual_seed(0)).items()}
    with torch.no_grad():
        case.loss(model, inputs)
        assert torch.equal(_hidden(calls[0], calls[0]["output"]), _hidden(calls[0]))
        random_ltd.remove(model)
        case.loss(model, inputs)
    assert len(structures) == 2 and structures[0] is structures[1], "the original layer's output structure"


def test_a_mixture_of_depths_without_routers_for_the_handle_s_layers_is_refused():
    case, model = _build("llama-sdpa-pad")
    handle = random_ltd.apply(model, "1:3", keep=8, seed=1)
    strategy = mod.MixtureOfDepths({1: torch.nn.Linear(32, 1)}, 0.5)
    with pytest.raises(random_ltd.RandomLTDError, match="routers for layers"):
        handle.strategy = strategy
    assert isinstance(handle.strategy, random_ltd.UniformSelection)


def test_per_block_compile_of_a_24_layer_model_routed_every_other_layer_holds_under_default_limits():
    """12 routed GPT-NeoX blocks, each compiled ``fullgraph`` under Dynamo's default recompile limit:
    the routed blocks share their graphs (a per-layer Python int or router looked up by position would
    make every routed block its own graph) and the run equals eager, aux loss included."""
    import test_compile

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = test_compile._deep_gpt_neox(24)
    eager_handle = mod.apply(eager, "1::2", capacity=0.25, skip_padding=False, aux_loss_coef=0.1)
    compiled = copy.deepcopy(eager)
    handle = random_ltd.get_handle(compiled)
    assert len(handle.layers) == 12
    backend, graphs = test_compile._counting()
    for block in compiled.gpt_neox.layers:
        block.compile(fullgraph=True, backend=backend)
    ids = torch.randint(0, zoo.VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    results = []
    for model, model_handle in ((eager, eager_handle), (compiled, handle)):
        for _step in range(2):
            model.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
        results.append((loss.detach(), model_handle.aux_loss().detach(),
                        {name: p.grad for name, p in model.named_parameters()}))
    torch._dynamo.reset()
    (ref_loss, ref_aux, ref_grads), (loss, aux, grads) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(aux, ref_aux, rtol=1e-5, atol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    assert len(graphs) <= 2  # one for the plain blocks, one shared by every routed block
