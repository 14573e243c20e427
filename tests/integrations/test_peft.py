"""Random-LTD on a PEFT LoRA model, in either order of ``get_peft_model`` and ``random_ltd.apply``,
checked like the core families: full keep equals the unwrapped model bitwise; dropped positions
pass unchanged; kept positions equal the original layer (LoRA included) on the gathered subsequence."""
from __future__ import annotations

import copy

import pytest
import torch
import transformers

peft = pytest.importorskip("peft")

import random_ltd  # noqa: E402
from random_ltd import ops  # noqa: E402
from random_ltd.layer import layer_state  # noqa: E402

SEQ, VOCAB, BATCH, KEEP = 16, 97, 3, 7
ORDERS = ("peft_then_apply", "apply_then_peft")


def tiny_gpt2() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=SEQ,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).train()


def lora(model: torch.nn.Module) -> torch.nn.Module:
    """LoRA on attention and MLP, with random A and B so that the adapters change every output."""
    torch.manual_seed(1)
    settings = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                               init_lora_weights=False, lora_dropout=0.0)
    return peft.get_peft_model(model, settings)


def build(order: str, keep: int | None, seed: int = 123):
    """(model with LoRA and random-LTD, the same model with LoRA only, the handle)."""
    reference = lora(tiny_gpt2())
    if order == "peft_then_apply":
        model = lora(tiny_gpt2())
        handle = random_ltd.apply(model, keep=keep, seed=seed)
    else:
        inner = tiny_gpt2()
        handle = random_ltd.apply(inner, keep=keep, seed=seed)
        model = lora(inner)
    return model, reference, handle


def tokens(seed: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("order", ORDERS)
def test_full_keep_equals_the_lora_model_without_random_ltd(order):
    model, reference, handle = build(order, keep=SEQ)
    assert handle.drop_layers == [1, 2]
    loss, grads = loss_and_grads(model, tokens())
    ref_loss, ref_grads = loss_and_grads(reference, tokens())
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and all("lora_" in name for name in grads)  # only LoRA trains
    for name in grads:
        assert torch.equal(grads[name], ref_grads[name]), name


def capture(model, handle, monkeypatch):
    """The indices drawn and each wrapped layer's input and output, in call order."""
    drawn, calls = [], []
    original = ops.keep_top
    monkeypatch.setattr(ops, "keep_top", lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1])
    blocks = [m for m in model.modules() if isinstance(m, transformers.models.gpt2.modeling_gpt2.GPT2Block)]
    for index in handle.drop_layers:
        blocks[index].register_forward_hook(
            lambda module, args, kwargs, out: calls.append((module, args[0] if args else kwargs["hidden_states"],
                                                            out if isinstance(out, torch.Tensor) else out[0])),
            with_kwargs=True)
    return drawn, calls


@pytest.mark.parametrize("order", ORDERS)
def test_dropped_positions_pass_unchanged_and_kept_ones_see_the_lora_layer_on_the_subsequence(order, monkeypatch):
    model, _, handle = build(order, keep=KEEP)
    drawn, calls = capture(model, handle, monkeypatch)
    model(input_ids=tokens(), labels=tokens())
    assert len(drawn) == len(calls) == 2
    for indices, (block, hidden, output) in zip(drawn, calls, strict=True):
        assert any("lora_A" in name for name, _ in block.named_parameters())
        assert indices.shape == (BATCH, KEEP)
        for b in range(BATCH):
            kept = indices[b]
            dropped = torch.ones(SEQ, dtype=torch.bool)
            dropped[kept] = False
            assert torch.equal(output[b, dropped], hidden[b, dropped])
            # the original GPT-2 block (causal attention) on the kept tokens alone, LoRA adapters included
            expected = layer_state(block).original_class.forward(block, hidden[b : b + 1, kept])
            expected = expected if isinstance(expected, torch.Tensor) else expected[0]
            torch.testing.assert_close(output[b, kept], expected[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ORDERS)
def test_lora_training_steps_draw_fresh_indices_and_remove_restores_the_lora_model(order, monkeypatch):
    model, reference, handle = build(order, keep=KEEP)
    drawn, _ = capture(model, handle, monkeypatch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        loss_and_grads(model, tokens(step))
        optimizer.step()
    assert not torch.equal(drawn[0], drawn[2])  # layer 1 at step 0 and at step 1
    inner = model.get_base_model()
    random_ltd.remove(inner if random_ltd.get_handle(inner) else model)
    trained = copy.deepcopy(model).eval()
    reference.load_state_dict(trained.state_dict())
    ids = tokens(5)
    assert torch.equal(trained(input_ids=ids).logits, reference.eval()(input_ids=ids).logits)
    assert type(trained.get_base_model().transformer.h[1]) is type(reference.get_base_model().transformer.h[1])
