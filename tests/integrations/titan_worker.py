"""Run under ``torchrun --nproc-per-node 2``: torchtitan's ``llama3_debugmodel`` with random-LTD, a few steps on CPU.

``--parallel fsdp`` (data parallel, FSDP2) or ``--parallel tp`` (tensor parallel with sequence
parallel). torchtitan 0.3.0 targets a newer torch than this CPU build: ``cpu_shim`` below adapts
it for this test only (the library never patches anything). The model is the debug model at a
short sequence with SDPA attention (FlexAttention has no backward on CPU) fed random tokens.
Rank 0 writes what every rank saw to ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types

import torch
import torch._utils
import torch.distributed as dist

SEQ, BATCH, STEPS, VOCAB = 64, 2, 4, 2048
SCHEDULE = dict(seq_len=SEQ, start=16, increment=16, every_steps=1)  # 16, 32, 48, full


def cpu_shim() -> None:
    """What torchtitan 0.3.0 needs from a newer torch, on CPU (test-only)."""
    torch._utils._get_available_device_type = lambda: "cpu"  # it would default to "cuda"
    barrier = dist.barrier
    dist.barrier = lambda *args, device_ids=None, **kwargs: barrier(*args, **kwargs)  # gloo takes no device_ids
    if not hasattr(dist, "set_timeout"):
        dist.set_timeout = lambda timeout, group=None: None
    from torch.distributed.fsdp import FSDPModule

    divide = FSDPModule.set_gradient_divide_factor

    def divide_with_sum(module, factor):  # factor 1.0 makes FSDP reduce with PREMUL_SUM, which gloo lacks
        divide(module, factor)
        module.set_force_sum_reduction_for_comms(True)
    FSDPModule.set_gradient_divide_factor = divide_with_sum
    memory_api = {"get_device_name": lambda device=None: "cpu", "memory_stats": lambda device=None: {},
                  "get_device_properties": lambda device=None: types.SimpleNamespace(total_memory=1 << 34),
                  "reset_peak_memory_stats": lambda device=None: None, "empty_cache": lambda: None}
    for name, function in memory_api.items():  # the accelerator memory API torchtitan's metrics read
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, function)


cpu_shim()

from torchtitan.components.dataloader import BaseDataLoader  # noqa: E402
from torchtitan.components.tokenizer import BaseTokenizer  # noqa: E402
from torchtitan.config import ConfigManager  # noqa: E402
from torchtitan.models.common.attention import ScaledDotProductAttention  # noqa: E402
from torchtitan.models.llama3.config_registry import llama3_debugmodel  # noqa: E402

import random_ltd  # noqa: E402
from random_ltd.integrations import torchtitan as ltd_titan  # noqa: E402
from random_ltd.integrations.distributed import exit_process  # noqa: E402


class RandomTokens(BaseDataLoader):
    """Random token batches, different per data-parallel rank (no dataset files offline)."""

    @dataclasses.dataclass(kw_only=True, slots=True)
    class Config(BaseDataLoader.Config):
        pass

    def __init__(self, config: Config, *, dp_rank: int, seq_len: int, local_batch_size: int, **kwargs):
        self.dp_rank, self.seq_len, self.batch = dp_rank, seq_len, local_batch_size
        self.step = 0

    def __iter__(self):
        while True:
            generator = torch.Generator().manual_seed(1000 * self.step + self.dp_rank)
            ids = torch.randint(0, VOCAB, (self.batch, self.seq_len + 1), generator=generator)
            self.step += 1
            yield {"input": ids[:, :-1]}, ids[:, 1:]

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


class NoTokenizer(BaseTokenizer):
    @dataclasses.dataclass(kw_only=True, slots=True)
    class Config(BaseTokenizer.Config):
        pass

    def __init__(self, config: Config, *, tokenizer_path: str):
        super().__init__()

    def encode(self, *args, **kwargs):
        raise NotImplementedError

    def decode(self, *args, **kwargs):
        raise NotImplementedError

    def get_vocab_size(self) -> int:
        return VOCAB


def llama3_debugmodel_random_ltd():
    """The user config function: the debug model, made CPU-sized, with random-LTD enabled."""
    config = llama3_debugmodel()
    for layer in config.model_spec.model.layers:
        layer.attention.inner_attention = ScaledDotProductAttention.Config()  # flex: no backward on CPU
    config.training.seq_len, config.training.local_batch_size, config.training.steps = SEQ, BATCH, STEPS
    config.dataloader, config.tokenizer = RandomTokens.Config(), NoTokenizer.Config()
    config.activation_checkpoint = dataclasses.replace(config.activation_checkpoint)
    config.validator.enable = False
    config.checkpoint.enable = False
    config.optimizer.implementation = "for-loop"
    return ltd_titan.enable(config, ltd_titan.RandomLTDConverter.Config(**SCHEDULE, seed=5))


def observe(trainer) -> dict:
    """Hooks recording, per step, the tokens a middle block keeps (its positions) and the LR."""
    model = trainer.model_parts[0]
    seen = {"kept": [], "hidden_types": set(), "lr": [], "loss": []}
    block = next(m for m in model.modules() if getattr(getattr(m, "attention", None), "rope", None) is not None
                 and random_ltd.layer.is_wrapped(m))

    def record(module, args, kwargs):
        positions = args[2] if len(args) > 2 else kwargs.get("positions")
        seen["kept"].append(None if positions is None else positions.tolist())
        seen["hidden_types"].add(type(args[0]).__name__)
    block.attention.register_forward_pre_hook(record, with_kwargs=True)
    block.register_forward_pre_hook(lambda module, args, kwargs: seen["hidden_types"].add(type(args[0]).__name__),
                                    with_kwargs=True)
    trainer.optimizers.register_step_pre_hook(
        lambda *a, **k: seen["lr"].append(trainer.optimizers.optimizers[0].param_groups[0]["lr"]))
    step = trainer.forward_backward_step

    def forward_backward_step(**kwargs):
        loss = step(**kwargs)
        seen["loss"].append(float(loss.detach()))
        return loss
    trainer.forward_backward_step = forward_backward_step
    return seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--parallel", choices=("fsdp", "tp", "none"), required=True)
    parser.add_argument("--dump", required=True)
    args = parser.parse_args()
    degrees = {"fsdp": ["--parallelism.data_parallel_shard_degree", "2"],
               "tp": ["--parallelism.tensor_parallel_degree", "2", "--parallelism.data_parallel_shard_degree", "1"],
               "none": []}[args.parallel]
    config = ConfigManager().parse_args([  # partial_dtensor: gloo lacks PREMUL_SUM (with the shim's forced sums)
        "--module", "titan_worker", "--config", "llama3_debugmodel_random_ltd", "--dump_folder", args.dump,
        "--parallelism.spmd_backend", "partial_dtensor", "--debug.seed", "0", *degrees])
    trainer = config.build()
    seen = observe(trainer)
    trainer.train()
    handle = random_ltd.get_handle(trainer.model_parts[0])
    result = {"kept": seen["kept"], "hidden_types": sorted(seen["hidden_types"]), "lr": seen["lr"],
              "loss": seen["loss"], "seed": handle.seed, "drop_layers": handle.drop_layers,
              "num_layers": handle.num_layers, "base_lr": trainer.optimizers.optimizers[0].defaults["lr"]}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if dist.get_rank() == 0:
        with open(args.out, "w") as file:
            json.dump(gathered, file)
    trainer.close()
    dist.barrier()
    exit_process()  # gloo can abort at interpreter exit after destroy_process_group


if __name__ == "__main__":
    main()
