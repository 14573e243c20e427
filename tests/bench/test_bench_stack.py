"""The ideal baseline (c) computes what random-LTD (b) computes when (b) keeps the same tokens."""
from __future__ import annotations

import pytest
import torch

from random_ltd.bench.config import StackShape
from random_ltd.bench.stack import StackBench, ideal_forward

SHAPE = StackShape("test", hidden=32, heads=4, layers=4, seq_len=24, batch=3)


def _forward_backward(bench: StackBench, forward):
    bench.stack.zero_grad(set_to_none=True)
    bench.inputs.grad = None
    output = forward()
    output.backward(bench.upstream)
    grads = {name: p.grad.clone() for name, p in bench.stack.named_parameters()}
    return output.detach(), bench.inputs.grad.clone(), grads


def _first_tokens(position, tokens, keep, context):
    return torch.arange(keep, device=tokens.device).expand(tokens.shape[0], keep)


_first_tokens.needs_context = False


@pytest.mark.parametrize("keep", [1, 7, 23])
def test_ideal_equals_random_ltd_keeping_the_first_tokens(keep):
    bench = StackBench(SHAPE, torch.device("cpu"), torch.float32)
    ideal = _forward_backward(bench, lambda: ideal_forward(bench.stack.layers, bench.inputs, bench.position_ids, keep))
    bench.handle.selection = _first_tokens
    bench.handle.set_keep(keep)
    dropped = _forward_backward(bench, lambda: bench.stack(bench.inputs, bench.position_ids))
    torch.testing.assert_close(dropped[0], ideal[0])
    torch.testing.assert_close(dropped[1], ideal[1])
    assert dropped[2].keys() == ideal[2].keys()
    for name in ideal[2]:
        torch.testing.assert_close(dropped[2][name], ideal[2][name], msg=name)


def test_ideal_differs_from_full_and_random_ltd_draws_other_tokens():
    """Guards the test above: the variants really differ when they should."""
    bench = StackBench(SHAPE, torch.device("cpu"), torch.float32)
    keep = 8
    with torch.no_grad():
        full = bench.stack(bench.inputs, bench.position_ids)
        ideal = ideal_forward(bench.stack.layers, bench.inputs, bench.position_ids, keep)
        bench.handle.set_keep(keep)
        dropped = bench.stack(bench.inputs, bench.position_ids)
    assert not torch.allclose(full, ideal)
    assert not torch.allclose(dropped, ideal)
    # causal layers: the kept prefix never sees later tokens, so it matches the full stack; the
    # rest skipped the middle layers
    torch.testing.assert_close(ideal[:, :keep], full[:, :keep])
    assert not torch.allclose(ideal[:, keep:], full[:, keep:])


def test_variants_run_with_the_right_kept_length():
    bench = StackBench(SHAPE, torch.device("cpu"), torch.float32)
    seen = []
    layer = bench.stack.layers[1]
    layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    steps = bench.variants([6, 12])
    assert sorted(steps) == ["full", "ideal@12", "ideal@6", "ltd@12", "ltd@6"]
    for name in ("full", "ltd@6", "ideal@12"):
        steps[name]()
    # the hook sees the call's own arguments (full length for ltd: the wrapper gathers inside)
    assert seen == [24, 24, 12]
    assert bench.inputs.grad is not None and bench.inputs.grad.shape == bench.inputs.shape


def test_ideal_lm_loss_is_the_model_loss_with_the_first_tokens_kept():
    from random_ltd.bench.config import GptShape
    from random_ltd.bench.gpt import GptBench, ideal_lm_loss

    bench = GptBench(GptShape(layers=4, hidden=32, heads=2, vocab=50, seq_len=20, batch=3), torch.device("cpu"),
                     torch.float32)
    ids = bench.input_ids
    with torch.no_grad():
        bench.handle.set_keep(None)
        full = bench.model(input_ids=ids, labels=ids, use_cache=False).loss
        torch.testing.assert_close(ideal_lm_loss(bench.model, ids, 20), full)
        bench.handle.selection = _first_tokens
        bench.handle.set_keep(7)
        dropped = bench.model(input_ids=ids, labels=ids, use_cache=False).loss
        bench.handle.set_keep(None)
        ideal = ideal_lm_loss(bench.model, ids, 7)
    torch.testing.assert_close(ideal, dropped)
    assert not torch.allclose(ideal, full)
