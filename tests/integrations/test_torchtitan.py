"""Random-LTD in torchtitan 0.3.0: the converter on one process, and llama3_debugmodel trained under FSDP and TP."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torchtitan")

from launching import HERE, torchrun  # noqa: E402
from titan_worker import BATCH, SCHEDULE, SEQ, STEPS  # noqa: E402

import random_ltd  # noqa: E402
from random_ltd.integrations import torchtitan as ltd_titan  # noqa: E402
from random_ltd.layer import layer_state  # noqa: E402

BASE_LR, WARMUP = 8e-4, 2  # llama3_debugmodel's AdamW LR and warmup steps


@pytest.fixture(autouse=True, scope="module")
def registry_left_as_found():
    """Converting a config registers torchtitan's block class; other modules' tests see the registry as it was."""
    yield
    random_ltd.unregister_layer(ltd_titan.BLOCK_CLASS)


@pytest.fixture(scope="module")
def titan_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("titan")
    runs = {}
    for parallel in ("fsdp", "tp"):
        out = folder / f"{parallel}.json"
        torchrun(HERE / "titan_worker.py", f"--out={out}", f"--parallel={parallel}", f"--dump={folder / parallel}",
                 timeout=120)
        runs[parallel] = json.loads(out.read_text())
    return runs


def forwards(rank_result):
    """Kept positions of the observed block per step (activation checkpointing records each forward twice)."""
    kept = rank_result["kept"]
    return [kept[2 * step] for step in range(STEPS)], [kept[2 * step + 1] for step in range(STEPS)]


@pytest.mark.parametrize("parallel", ["fsdp", "tp"])
def test_kept_length_follows_the_schedule_once_per_optimizer_step(titan_runs, parallel):
    schedule = random_ltd.MSLG(**SCHEDULE)
    for rank in titan_runs[parallel]:
        first, recomputed = forwards(rank)
        assert first == recomputed  # the checkpointed block replays its draws
        lengths = [None if kept is None else (len(kept), len(kept[0])) for kept in first]
        assert lengths == [(BATCH, schedule(step)) if schedule(step) < SEQ else None for step in range(STEPS)]
        assert rank["drop_layers"] == [1, 2, 3, 4] and rank["num_layers"] == 6
        assert all(torch.isfinite(torch.tensor(rank["loss"])))


def test_fsdp_ranks_draw_apart_and_tp_ranks_alike(titan_runs):
    fsdp, tp = titan_runs["fsdp"], titan_runs["tp"]
    assert fsdp[0]["seed"] != fsdp[1]["seed"] and forwards(fsdp[0])[0][0] != forwards(fsdp[1])[0][0]
    assert tp[0]["seed"] == tp[1]["seed"] and tp[0]["kept"] == tp[1]["kept"]


def test_tensor_parallel_blocks_run_the_sequence_parallel_path(titan_runs):
    assert titan_runs["tp"][0]["hidden_types"] == ["DTensor"]  # torchtitan's SP: sequence-sharded DTensors
    assert titan_runs["fsdp"][0]["hidden_types"] == ["Tensor"]


@pytest.mark.parametrize("parallel", ["fsdp", "tp"])
def test_learning_rate_follows_the_layer_tokens(titan_runs, parallel):
    schedule = random_ltd.MSLG(**SCHEDULE)
    per_step = [4 * schedule(step) + 2 * SEQ for step in range(STEPS + 1)]  # per sequence: 4 dropping, 2 full
    warmup, total = WARMUP * 6 * SEQ, sum(per_step)  # the budget runs one step past the end
    expected = [BASE_LR * random_ltd.lr_factor(sum(per_step[:step + 1]), total, warmup, "linear")
                for step in range(STEPS)]
    assert titan_runs[parallel][0]["lr"] == pytest.approx(expected, rel=1e-9)


def debug_model_config(inner_attention):
    from torchtitan.models.llama3 import model_registry

    config = model_registry("debugmodel").model
    for layer in config.layers:
        layer.attention.inner_attention = inner_attention
    return config


def build(config, seed=0):
    torch.manual_seed(seed)
    model = config.build()
    model.init_weights()
    return model


@pytest.fixture(scope="module")
def sdpa_model():
    from torchtitan.models.common.attention import ScaledDotProductAttention

    ltd = ltd_titan.RandomLTDConverter.Config(seq_len=32, start=8, increment=8, every_steps=1, seed=3)
    return build(ltd.build().convert(debug_model_config(ScaledDotProductAttention.Config())))


def kept_positions(block):
    seen = []
    block.attention.register_forward_pre_hook(lambda module, args: seen.append(args[2]))
    return seen


def test_converter_makes_the_middle_blocks_drop(sdpa_model):
    handle = random_ltd.get_handle(sdpa_model)
    assert handle.drop_layers == [1, 2, 3, 4] and handle.num_layers == 6 and handle.seed == 3
    wrapped = [random_ltd.layer.is_wrapped(block) for block in sdpa_model.layers.values()]
    assert wrapped == [False] + [True] * 4 + [False]


def test_dropping_block_equals_the_original_block_on_the_kept_tokens(sdpa_model):
    random_ltd.get_handle(sdpa_model).set_keep(8)
    block = sdpa_model.layers["2"]
    seen = kept_positions(block)
    x = torch.randn(2, 32, 256)
    out = block(x, None, None)
    index = seen[-1]
    assert index.shape == (2, 8)
    original = layer_state(block).original_class
    take = index.unsqueeze(-1).expand(-1, -1, 256)
    short = original.forward(block, torch.gather(x, 1, take), None, index)
    assert torch.equal(out, x.scatter(1, take, short))


def two_documents(device):
    document = (torch.arange(32, device=device) >= 13).long().expand(2, 32)  # documents 0..12 and 13..31

    def same_document_causal(b, h, q, kv):
        return (kv <= q) & (document[b, q] == document[b, kv])
    return same_document_causal


def test_the_blocks_mask_is_the_original_mask_on_the_kept_positions():
    from torch.nn.attention.flex_attention import create_block_mask, create_mask

    mask_mod = two_documents("cpu")
    generator = torch.Generator().manual_seed(0)
    index = torch.stack([torch.randperm(32, generator=generator)[:12].sort().values for _ in range(2)])
    arguments = {"attention_masks": create_block_mask(mask_mod, 2, None, 32, 32, device="cpu"), "positions": None}
    ltd_titan.ADAPTER.prepare(None, arguments, index)
    kept = arguments["attention_masks"]
    assert torch.equal(arguments["positions"], index)  # RoPE sees the kept tokens' own positions
    assert kept.seq_lengths == (12, 12)
    full = create_mask(mask_mod, 2, 1, 32, 32, device="cpu")[:, 0]
    expected = torch.stack([full[b][index[b]][:, index[b]] for b in range(2)])
    assert torch.equal(create_mask(kept.mask_mod, 2, 1, 12, 12, device="cpu")[:, 0], expected)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs CUDA: torchtitan compiles flex attention, which CPU inductor cannot run here")
def test_flex_attention_block_equals_the_original_block_on_the_kept_tokens():
    from torch.nn.attention.flex_attention import create_block_mask
    from torchtitan.models.common.attention import FlexAttention

    ltd = ltd_titan.RandomLTDConverter.Config(seq_len=32, start=8, increment=8, every_steps=1)
    with torch.device("cuda"):
        model = build(ltd.build().convert(debug_model_config(FlexAttention.Config())))
    random_ltd.get_handle(model).set_keep(12)
    block, mask_mod = model.layers["1"], two_documents("cuda")
    seen = kept_positions(block)
    x = torch.randn(2, 32, 256, device="cuda")
    out = block(x, create_block_mask(mask_mod, 2, None, 32, 32, device="cuda"), None)
    index = seen[-1]
    kept_mask = create_block_mask(lambda b, h, q, kv: mask_mod(b, h, index[b, q], index[b, kv]), 2, None, 12, 12,
                                  device="cuda")
    take = index.unsqueeze(-1).expand(-1, -1, 256)
    short = layer_state(block).original_class.forward(block, torch.gather(x, 1, take), kept_mask, index)
    assert torch.allclose(out, x.scatter(1, take, short), atol=1e-5)
    out.sum().backward()  # flex attention's backward runs on the GPU


def test_a_mask_that_cannot_be_gathered_is_a_clear_error(sdpa_model):
    random_ltd.get_handle(sdpa_model).set_keep(8)
    with pytest.raises(random_ltd.RandomLTDError, match="cannot be gathered"):
        sdpa_model.layers["1"](torch.randn(2, 32, 256), object(), None)


def test_enable_checks_the_sequence_length_and_refuses_twice():
    from torchtitan.models.llama3.config_registry import llama3_debugmodel

    config = llama3_debugmodel()
    config.training.seq_len = 64
    with pytest.raises(random_ltd.RandomLTDError, match="seq_len"):
        ltd_titan.enable(config, ltd_titan.RandomLTDConverter.Config(seq_len=32, start=8, increment=8, every_steps=1))
    ltd = ltd_titan.RandomLTDConverter.Config(seq_len=64, start=8, increment=8, every_steps=1)
    ltd_titan.enable(config, ltd)
    assert isinstance(config.lr_scheduler, ltd_titan.LayerTokenLRSchedulers.Config)
    with pytest.raises(random_ltd.RandomLTDError, match="already enabled"):
        ltd_titan.enable(config, ltd)


def test_converter_validates_its_schedule_and_selection():
    with pytest.raises(random_ltd.ConfigError):
        ltd_titan.RandomLTDConverter.Config(seq_len=32, start=64, increment=8, every_steps=1).build()
    converter = ltd_titan.RandomLTDConverter.Config(seq_len=32, start=8, increment=8, every_steps=1, layers="9").build()
    with pytest.raises(random_ltd.RandomLTDError, match="out of range"):
        converter.convert(debug_model_config(None))


class Optimizers(list):
    """torchtitan's optimizer container as the LR container sees it: a list of optimizers with attributes."""


def test_resume_restores_the_kept_length_and_the_learning_rate_of_the_saved_step(sdpa_model):
    ltd = ltd_titan.RandomLTDConverter.Config(seq_len=32, start=8, increment=8, every_steps=1)
    handle = random_ltd.get_handle(sdpa_model)
    optimizers = Optimizers([torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)])
    optimizers.register_step_post_hook = lambda hook: None
    parallel_dims = type("ParallelDims", (), {"dp_enabled": False})()
    stepper = ltd_titan.post_optimizer_build(optimizers, [sdpa_model], parallel_dims, ltd=ltd)
    lr_config = ltd_titan.LayerTokenLRSchedulers.Config(warmup_steps=0, decay_type="linear", ltd=ltd, num_layers=6)
    schedulers = lr_config.build(optimizers=optimizers, training_steps=4)
    assert handle.keep == 8 and stepper.step == 0
    schedulers.load_state_dict({"last_epoch": 2})
    assert stepper.step == 2 and handle.keep == 24
    expected = ltd_titan.layer_token_lr_lambda(ltd, 6, 4, 0, "linear", 0.0)(2)
    assert schedulers.schedulers[0].get_last_lr()[0] == pytest.approx(expected) and 0 < expected < 1


def test_the_documented_config_function_builds_a_random_ltd_config():
    from launching import REPO

    text = (REPO / "docs" / "scale.md").read_text().split("## torchtitan")[1]
    code = text.split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(code, "docs/scale.md torchtitan example", "exec"), namespace)
    config = namespace["llama3_8b_random_ltd"]()
    assert type(config.model_spec.model).random_ltd.start == 256
    assert isinstance(config.lr_scheduler, ltd_titan.LayerTokenLRSchedulers.Config)
    assert config.model_spec.post_optimizer_build_fn is not None
