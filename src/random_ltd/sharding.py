"""Sequence-parallel hidden states (``DTensor`` sharded on the sequence) around a dropping layer.

A dropping layer gathers them whole (``to_full``), drops exactly as an unsharded model would,
and hands its inner layer the kept tokens sharded again (``to_sharded``); docs/scale.md.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from random_ltd.errors import RandomLTDError


def is_dtensor(value: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor  # noqa: PLC0415  (torch.distributed may be absent)
    except ImportError:
        return False
    return isinstance(value, DTensor)


@dataclasses.dataclass(frozen=True)
class ShardedLayout:
    """How a layer's hidden states were laid out on the mesh, to put kept tokens and outputs back."""

    mesh: Any
    placements: tuple
    sequence_dim: int
    ndim: int

    @classmethod
    def of(cls, hidden: torch.Tensor, sequence_dim: int) -> ShardedLayout | None:
        """The layout of ``hidden`` if it is a ``DTensor``, else ``None`` (plain tensors pass as they are)."""
        if not is_dtensor(hidden):
            return None
        return cls(hidden.device_mesh, tuple(hidden.placements), sequence_dim % hidden.dim(), hidden.dim())

    def to_full(self, value: torch.Tensor) -> torch.Tensor:
        """The whole (plain) tensor of a ``DTensor`` in this layout; differentiable."""
        from torch.distributed.tensor import Replicate  # noqa: PLC0415

        if not is_dtensor(value):
            return value
        return value.redistribute(value.device_mesh, [Replicate()] * value.device_mesh.ndim).to_local()

    def to_sharded(self, full: torch.Tensor) -> torch.Tensor:
        """A plain tensor, identical on every rank, as a ``DTensor`` in this layout; differentiable."""
        from torch.distributed.tensor import DTensor, Replicate  # noqa: PLC0415

        self.check_divisible(full.shape[self.sequence_dim])
        replicated = DTensor.from_local(full, self.mesh, [Replicate()] * self.mesh.ndim, run_check=False)
        return replicated.redistribute(self.mesh, self.placements)

    def check_divisible(self, length: int) -> None:
        degree = self.sequence_parallel_degree()
        if length % degree:
            raise RandomLTDError(
                f"kept length {length} is not divisible by the sequence-parallel degree {degree}: sequence "
                f"parallelism shards the kept tokens evenly; use a multiple of {degree} (e.g. MSLG(..., "
                f"increment={degree}, start=a multiple of {degree}))"
            )

    def sequence_parallel_degree(self) -> int:
        degree = 1
        for mesh_dim, placement in enumerate(self.placements):
            if placement.is_shard() and placement.dim % self.ndim == self.sequence_dim:
                degree *= self.mesh.size(mesh_dim)
        return degree
