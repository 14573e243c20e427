"""Data parallelism for the training program: ``torchrun --nproc-per-node N -m random_ltd train``.

One process per rank. Every rank builds the same model from the same seed, draws its own
random-LTD indices (a per-rank seed), trains on its own share of each step's batches (batch
index ``step * world_size + rank``) and DDP averages the gradients, so the parameters stay
identical. Only rank 0 writes files. Without torchrun (no ``WORLD_SIZE`` > 1) nothing changes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> Ranks:
    """Join the process group that torchrun describes (gloo on CPU, nccl on CUDA); else one rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun, each rank takes the GPU of its local rank."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def wrap(model: nn.Module, ranks: Ranks) -> nn.Module:
    """The module to call for training: DDP around ``model`` when distributed, else ``model``."""
    if not ranks.distributed:
        return model
    device_ids = [model.device.index] if getattr(model, "device", torch.device("cpu")).type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def parameter_digest(model: nn.Module) -> str:
    """A short hash of every parameter's bytes: equal digests mean bitwise-equal parameters."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def gather_objects(value, ranks: Ranks) -> list:
    """``value`` from every rank, in rank order (a collective: every rank must call it)."""
    if not ranks.distributed:
        return [value]
    gathered: list = [None] * ranks.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def shutdown(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
