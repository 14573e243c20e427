"""The dropping layer's forward and backward never block the host on a GPU.

Cases: dense masks (sdpa, eager, padded or not), packed sequences under sdpa, flex attention (its
``BlockMask`` composed with the kept tokens), and the flash varlen metadata path. The CPU audit of the
same paths is ``tests/test_sync_audit.py``; ``scripts/gpu-check`` runs both on a GPU.

``torch.cuda.set_sync_debug_mode("error")`` raises at any device-to-host synchronisation
(``.item()``, ``.tolist()``, boolean-mask indexing, ``nonzero``, blocking copies). Needs CUDA:
skipped on CPU-only machines, where ``tests/test_compile.py`` (fullgraph) is the nearest check.
"""
from __future__ import annotations

import pytest
import torch
import zoo

import random_ltd
from random_ltd import tokenbypass

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CASES = {case.name: case for case in zoo.CASES
         if case.name in ("gpt2-eager-pad", "gpt2-sdpa", "bert-sdpa-pad", "llama-sdpa-pad", "llama-sdpa",
                          "llama-sdpa-packed", "vit-sdpa")}
CASES["llama-flex-pad"] = zoo.Case("llama-flex-pad", "llama", lambda: zoo.llama("flex_attention"),
                                   lambda gen: {**zoo._lm_inputs(gen, padded=True), "use_cache": False}, zoo._lm_loss)


def _layer_call(model, handle):
    """A middle layer and the arguments the model passes it (recorded in a normal forward)."""
    layer = dict(model.named_modules())[handle.layers[0].name]
    recorded = {}

    def record(module, args, kwargs):
        recorded.update(args=args, kwargs=kwargs)

    hook = layer.register_forward_pre_hook(record, with_kwargs=True)
    return layer, recorded, hook


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach().requires_grad_(value.is_floating_point())
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value


@pytest.mark.parametrize("name", list(CASES))
def test_dropping_layer_forward_and_backward_without_host_sync(name):
    _check_layer_without_host_sync(CASES[name])


def test_flash_varlen_metadata_path_without_host_sync(monkeypatch):
    """The kept tokens' varlen boundaries, computed as under flash attention (the lookup answers flash;
    sdpa runs and ignores them), so that it runs without the flash-attn package."""
    import sync_audit

    sync_audit.pretend_flash(monkeypatch)
    _check_layer_without_host_sync(CASES["llama-sdpa-packed"])


def _check_layer_without_host_sync(case):
    torch.manual_seed(0)
    model = case.build().cuda().train()
    handle = random_ltd.apply(model, keep=case.seq_len // 2, seed=1)
    layer, recorded, hook = _layer_call(model, handle)
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v
              for k, v in case.inputs(torch.Generator().manual_seed(1)).items()}
    case.loss(model, inputs)
    hook.remove()
    args = tuple(_detached(a) for a in recorded["args"])
    kwargs = {k: _detached(v) for k, v in recorded["kwargs"].items()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        output = layer(*args, **kwargs)
        output = output if isinstance(output, torch.Tensor) else output[0]
        output.float().square().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(output).all()


def test_tokenbypass_importance_update_without_host_sync():
    importance = tokenbypass.TokenImportance(100)
    ids = torch.randint(0, 100, (4, 32), device="cuda")
    losses = torch.rand(4, 32, device="cuda")
    importance.on(ids.device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        importance.update(ids, losses)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert importance.updates == 1
