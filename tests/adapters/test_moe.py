"""MoE decoders: the router load-balancing loss counts exactly the tokens each layer routed."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import zoo

import random_ltd
from random_ltd import ops
from random_ltd.accounting import routed_tokens_per_step
from random_ltd.adapters.moe import router_class

torch.set_num_threads(1)
MOE = [zoo.mixtral, zoo.qwen2_moe, zoo.qwen3_moe, zoo.olmoe]
KEEP = 6


def _brute_force_aux(rows: list[torch.Tensor], valid: list[torch.Tensor], num_experts: int, top_k: int) -> float:
    """The pooled Switch-Transformer loss, one (layer, token) row at a time."""
    chosen_counts = [0.0] * num_experts
    probability_sums = [0.0] * num_experts
    valid_rows = 0.0
    for logits, weights in zip(rows, valid, strict=True):
        for row, weight in zip(logits.double(), weights.tolist(), strict=True):
            if not weight:
                continue
            probabilities = row.softmax(-1)
            for expert in probabilities.topk(top_k).indices.tolist():
                chosen_counts[expert] += 1
            for expert in range(num_experts):
                probability_sums[expert] += float(probabilities[expert])
            valid_rows += 1
    return num_experts * sum(c / valid_rows * p / valid_rows
                             for c, p in zip(chosen_counts, probability_sums, strict=True))


def _record_routers(model, monkeypatch):
    drawn, routed = [], []
    original = ops.keep_top
    monkeypatch.setattr(ops, "keep_top", lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1])
    for module in model.modules():
        if isinstance(module, router_class(model)):
            module.register_forward_hook(lambda m, a, out: routed.append(out[0].detach()))
    return drawn, routed


def _inputs(seed=0):
    inputs = zoo._lm_inputs(torch.Generator().manual_seed(seed), padded=True)
    inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    return inputs


@pytest.mark.parametrize("build", MOE, ids=lambda f: f.__name__)
def test_aux_loss_counts_the_valid_tokens_each_layer_routed(build, monkeypatch):
    torch.manual_seed(0)
    model = build().train()
    handle = random_ltd.apply(model, keep=KEEP, seed=1)
    drawn, routed = _record_routers(model, monkeypatch)
    inputs = _inputs()
    output = model(**inputs)
    mask = inputs["attention_mask"]
    wrapped = set(handle.drop_layers)
    kept_iter = iter(drawn)
    valid = [mask.gather(1, next(kept_iter)).reshape(-1) if i in wrapped else mask.reshape(-1) for i in range(4)]
    assert [rows.shape[0] for rows in routed] == [v.numel() for v in valid] == [48, 18, 18, 48]
    expected = _brute_force_aux(routed, valid, model.num_experts, model.num_experts_per_tok)
    assert output.aux_loss.item() == pytest.approx(expected, rel=1e-5)
    assert [rows.shape for rows in output.router_logits] == [rows.shape for rows in routed]
    logits, labels = output.logits[:, :-1], inputs["labels"][:, 1:]
    cross_entropy = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(output.loss, cross_entropy + model.router_aux_loss_coef * output.aux_loss)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("build", MOE, ids=lambda f: f.__name__)
def test_at_full_keep_the_losses_are_the_models_own(build):
    torch.manual_seed(0)
    model = build().train()
    reference = copy.deepcopy(model)
    random_ltd.apply(model, keep=zoo.SEQ)
    inputs = _inputs(1)
    ours, theirs = model(**inputs), reference(**inputs)
    assert torch.equal(ours.aux_loss, theirs.aux_loss)
    assert torch.equal(ours.loss, theirs.loss)
    assert len(ours.router_logits) == len(theirs.router_logits)
    assert all(torch.equal(a, b) for a, b in zip(ours.router_logits, theirs.router_logits, strict=True))


def test_without_a_mask_or_in_eval_the_model_computes_its_own_loss():
    torch.manual_seed(0)
    model = zoo.mixtral().train()
    reference = copy.deepcopy(model)
    random_ltd.apply(model, keep=zoo.SEQ)
    ids = _inputs(2)["input_ids"]
    assert torch.equal(model(input_ids=ids, labels=ids).loss, reference(input_ids=ids, labels=ids).loss)
    model.eval(), reference.eval()
    inputs = _inputs(3)
    assert torch.equal(model(**inputs).aux_loss, reference(**inputs).aux_loss)


def test_routed_tokens_are_reported_and_match_the_accounting():
    model = zoo.qwen2_moe().train()
    handle = random_ltd.apply(model, keep=KEEP, seed=0)
    model(**_inputs())
    routed = handle.router_loss.routed_tokens
    assert routed == [zoo.BATCH * zoo.SEQ, zoo.BATCH * KEEP, zoo.BATCH * KEEP, zoo.BATCH * zoo.SEQ]
    assert sum(routed) == routed_tokens_per_step(zoo.SEQ, zoo.BATCH, 4, handle.drop_layers, KEEP)
    top_k = model.num_experts_per_tok
    assert routed_tokens_per_step(zoo.SEQ, zoo.BATCH, 4, handle.drop_layers, KEEP, top_k=top_k) == top_k * sum(routed)


def test_remove_takes_the_router_hooks_away():
    model = zoo.mixtral().train()
    reference = copy.deepcopy(model)
    random_ltd.apply(model, keep=KEEP, seed=0)
    random_ltd.remove(model)
    inputs = _inputs(4)
    assert torch.equal(model(**inputs).loss, reference(**inputs).loss)


def test_gradient_checkpointing_keeps_the_loss():
    torch.manual_seed(0)
    model = zoo.mixtral().train()
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable()
    for m in (model, checkpointed):
        random_ltd.apply(m, keep=KEEP, seed=3)
    losses = []
    for m in (model, checkpointed):
        torch.manual_seed(7)  # the same draws
        loss = m(**_inputs(5)).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
