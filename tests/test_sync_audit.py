"""No host sync in a dropping layer, on every attention path: audited on the CPU (``sync_audit``).

A training forward and backward of a tiny model runs under ``sync_audit.audit``; what random-LTD
calls (directly, or through torch functions) that would block the host on a GPU must number 0 per
dropping layer: 0 in the whole step on every path but flash's, where at most 1 per forward is allowed
(flash's varlen kernel takes the longest document's length as a host integer).
The model's own syncs (transformers' mask building) are counted apart and not judged here.

Paths: sdpa and eager (dense masks, padded or not), packed sequences under sdpa (the block-diagonal
mask built before the layers), flex attention (forward only on the CPU: flex has no CPU backward), and
flash attention's varlen metadata. Flash cannot run on the CPU, so that path runs an sdpa model whose
attention-implementation lookup (random-LTD's, not transformers') is made to answer "flash_attention_2"
(``sync_audit.pretend_flash``): every dropping layer then computes the kept tokens' varlen boundaries
exactly as under flash, and sdpa ignores them; a hook checks that they reach the attention. On CUDA the
same audit runs on the device (``scripts/gpu-check``), flex with its backward. Mixture-of-Depths'
training step (learned top-k, weighted rejoin, router-prediction loss) is held to the same rule; its
causal inference path reads the routed count on the host by design (``mod.select_causal``).
"""
from __future__ import annotations

import textwrap

import pytest
import sync_audit
import torch
import zoo
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import random_ltd
from random_ltd import ops
from random_ltd.attention.varlen import kept_varlen_kwargs

torch.set_num_threads(1)
CASES = {case.name: case for case in zoo.CASES}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _moved(inputs: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _spy_dropping(monkeypatch) -> list:
    """Each dropping layer call that dropped, so that no path passes by not dropping at all."""
    calls, split = [], ops.split_tokens

    def counting_split(*args, **kwargs):
        calls.append(1)
        return split(*args, **kwargs)

    monkeypatch.setattr(ops, "split_tokens", counting_split)
    return calls


def _audited_step(model, inputs: dict, loss, backward: bool = True, **audit_options):
    with sync_audit.audit(model, **audit_options) as audit:
        if backward:
            loss(model, inputs).backward()
        else:
            with torch.no_grad():
                model(**inputs)
    return audit


def _assert_sync_free(audit, handle, dropped: list, per_forward: int = 0) -> None:
    """At most ``per_forward`` syncs from random-LTD in the whole step (wherever it happens: once per
    forward may sit in the first dropping layer); with 2+ dropping layers a per-layer sync cannot hide."""
    assert len(handle.layers) >= 2 and len(dropped) >= len(handle.layers), "too few dropping layers ran"
    syncs = audit.select("sync", "random_ltd")
    assert len(syncs) <= per_forward, f"host syncs from random-LTD:\n{audit.describe()}"
    assert not audit.select("host_to_device", "random_ltd", in_layer=True), audit.describe()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["gpt2-sdpa", "llama-sdpa-pad", "bert-sdpa-pad", "gpt2-eager-pad",
                                  "bert-eager-pad", "llama-eager-leftpad", "llama-sdpa-packed",
                                  "llama-eager-packed", "vit-sdpa"])
def test_dense_mask_paths_do_not_sync_in_dropping_layers(name, device, monkeypatch):
    case = CASES[name]
    torch.manual_seed(0)
    model = case.build().to(device).train()
    handle = random_ltd.apply(model, keep=case.seq_len // 2, seed=1)
    dropped = _spy_dropping(monkeypatch)
    inputs = _moved(case.inputs(torch.Generator().manual_seed(1)), device)
    audit = _audited_step(model, inputs, case.loss, forward_traces=True)
    _assert_sync_free(audit, handle, dropped)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["plain", "padded", "packed"])
def test_flex_path_does_not_sync_in_dropping_layers(kind, device, monkeypatch):
    # transformers compiles its flex kernel, which Dynamo refuses under a dispatch mode: the kernel
    # runs unwatched at the aten level; the BlockMask random-LTD builds before it is watched
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "flex_attention",
                        sync_audit.unwatched(ALL_ATTENTION_FUNCTIONS["flex_attention"]))
    torch.manual_seed(0)
    model = zoo.llama("flex_attention").to(device).train()
    handle = random_ltd.apply(model, keep=zoo.SEQ // 2, seed=1)
    dropped = _spy_dropping(monkeypatch)
    gen = torch.Generator().manual_seed(1)
    inputs = zoo._packed_inputs(gen) if kind == "packed" else zoo._lm_inputs(gen, padded=kind == "padded")
    inputs = _moved({**inputs, "use_cache": False}, device)
    audit = _audited_step(model, inputs, zoo._lm_loss, backward=device == "cuda")  # no flex backward on CPU
    _assert_sync_free(audit, handle, dropped)


def _received_boundaries(model, handle) -> list:
    received = []
    modules = dict(model.named_modules())
    for wrapped in handle.layers:
        modules[wrapped.name].self_attn.register_forward_pre_hook(
            lambda module, args, kwargs: received.append("cu_seq_lens_q" in kwargs), with_kwargs=True)
    return received


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("boundaries", ["from_positions", "given"])
def test_flash_varlen_metadata_does_not_sync_in_dropping_layers(boundaries, device, monkeypatch):
    sync_audit.pretend_flash(monkeypatch)
    torch.manual_seed(0)
    model = zoo.llama("sdpa").to(device).train()
    handle = random_ltd.apply(model, keep=zoo.SEQ // 2, seed=1)
    dropped, received = _spy_dropping(monkeypatch), _received_boundaries(model, handle)
    inputs = zoo._packed_inputs(torch.Generator().manual_seed(1))
    if boundaries == "given":  # a padding-free collator passes the boundaries
        everything = torch.arange(zoo.SEQ)[None]
        cu_seq_lens = kept_varlen_kwargs(everything, zoo.SEQ, None, inputs["position_ids"])["cu_seq_lens_q"]
        inputs.update(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=zoo.SEQ,
                      max_length_k=zoo.SEQ)
    audit = _audited_step(model, _moved(inputs, device), zoo._lm_loss, forward_traces=True)
    assert received and all(received), "the varlen metadata path did not run"
    _assert_sync_free(audit, handle, dropped, per_forward=1)  # flash's varlen call takes max_length on the host


# --- the audit can fail: planted syncs are counted and attributed ---------------------------------

def _as_random_ltd_code(source: str, name: str, **names):
    """A function compiled as if written in ``random_ltd/ops.py``: a sync planted in random-LTD's code."""
    namespace = {"torch": torch, **names}
    exec(compile(textwrap.dedent(source), ops.__file__, "exec"), namespace)
    return namespace[name]


def _gpt2_step(**audit_options):
    torch.manual_seed(0)
    model = zoo.gpt2("sdpa").train()
    handle = random_ltd.apply(model, keep=zoo.SEQ // 2, seed=1)
    inputs = zoo._lm_inputs(torch.Generator().manual_seed(1))
    return model, handle, _audited_step(model, inputs, zoo._lm_loss, **audit_options)


def test_a_planted_item_in_a_dropping_layer_is_counted_once_per_layer(monkeypatch):
    planted = _as_random_ltd_code("""
        def keep_top_reading_the_host(keys, keep):
            keys.max().item()
            return keep_top(keys, keep)
        """, "keep_top_reading_the_host", keep_top=ops.keep_top)
    monkeypatch.setattr(ops, "keep_top", planted)
    _, handle, audit = _gpt2_step()
    assert audit.per_layer() == {wrapped.name: 1 for wrapped in handle.layers}
    record = audit.select("sync", "random_ltd")[0]
    assert record.call == "item" and record.where.endswith("in keep_top_reading_the_host") and not record.backward


@pytest.mark.parametrize("planted", ["torch.nonzero(indices > 0)", "indices[indices > 0]", "torch.unique(indices)",
                                     "indices.tolist()", "indices.cpu()", "indices.to('cpu')", "bool(indices[0, 0])",
                                     "torch.repeat_interleave(indices[0])", "indices.masked_select(indices > 0)"])
def test_data_dependent_ops_called_by_random_ltd_are_counted(planted, monkeypatch):
    planted_flat_indices = _as_random_ltd_code(f"""
        def planted_flat_indices(indices, seq_len):
            {planted}
            return flat_indices(indices, seq_len)
        """, "planted_flat_indices", flat_indices=ops.flat_indices)
    monkeypatch.setattr(ops, "flat_indices", planted_flat_indices)
    _, handle, audit = _gpt2_step()
    assert len(audit.select("sync", "random_ltd", in_layer=True)) == len(handle.layers), audit.describe(None)


def test_a_host_to_device_copy_is_counted_apart(monkeypatch):
    planted = _as_random_ltd_code("""
        def flat_indices_with_a_copy(indices, seq_len):
            torch.tensor([seq_len], device=indices.device)
            return flat_indices(indices, seq_len)
        """, "flat_indices_with_a_copy", flat_indices=ops.flat_indices)
    monkeypatch.setattr(ops, "flat_indices", planted)
    _, handle, audit = _gpt2_step()
    assert not audit.select("sync", "random_ltd")
    assert len(audit.select("host_to_device", "random_ltd", in_layer=True)) == len(handle.layers)


def test_the_models_own_syncs_are_reported_apart():
    torch.manual_seed(0)
    model = zoo.gpt2("sdpa").train()
    handle = random_ltd.apply(model, keep=zoo.SEQ // 2, seed=1)
    attention = dict(model.named_modules())[handle.layers[0].name].attn

    def read_the_host(module, args) -> None:  # the model's own code, inside a dropping layer
        args[0].sum().item()

    attention.register_forward_pre_hook(read_the_host)
    audit = _audited_step(model, zoo._lm_inputs(torch.Generator().manual_seed(1)), zoo._lm_loss)
    assert not audit.select("sync", "random_ltd")
    assert [record.layer for record in audit.select("sync", "model", in_layer=True)] == [handle.layers[0].name]


def test_a_backward_sync_is_attributed_by_its_forward_with_forward_traces(monkeypatch):
    """A boolean-mask gather's backward (an index_put with the mask) runs from ``.backward()``: only the
    forward's recorded stack tells that random-LTD's code asked for it."""
    planted = _as_random_ltd_code("""
        def split_by_mask(hidden, flat, keep):
            kept, passthrough = split_tokens(hidden, flat, keep)
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            return kept + 0 * hidden[mask].sum(), passthrough
        """, "split_by_mask", split_tokens=ops.split_tokens)
    monkeypatch.setattr(ops, "split_tokens", planted)
    for traced in (False, True):
        _, handle, audit = _gpt2_step(forward_traces=traced)
        backward = [r for r in audit.select("sync", "random_ltd", in_layer=True) if r.backward]
        assert len(backward) == (len(handle.layers) if traced else 0), audit.describe(None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["gpt2-sdpa", "llama-sdpa-pad", "gpt2-eager-pad", "bert-sdpa-pad", "vit-sdpa"])
def test_mixture_of_depths_routing_does_not_sync_in_routed_layers(name, device, monkeypatch):
    """Mixture-of-Depths' top-k, weighting and router-prediction loss: the training step as random-LTD's."""
    from random_ltd import mod

    case = CASES[name]
    torch.manual_seed(0)
    model = case.build().to(device).train()
    handle = mod.apply(model, [1, 2], capacity=0.5)
    dropped = _spy_dropping(monkeypatch)
    inputs = _moved(case.inputs(torch.Generator().manual_seed(1)), device)
    audit = _audited_step(model, inputs, lambda model, inputs: case.loss(model, inputs) + handle.aux_loss(),
                          forward_traces=True)
    _assert_sync_free(audit, handle, dropped)
