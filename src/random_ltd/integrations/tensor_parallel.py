"""Random-LTD under tensor parallelism (TP) and sequence parallelism (SP), on a ``DeviceMesh``.

Two rules (docs/scale.md):

- **One draw per tensor-parallel group.** The ranks of a TP group hold shards of the *same*
  sequences, so their dropping layers must keep the same tokens; data-parallel groups hold
  different sequences and draw apart. ``mesh_rank_seed(base, mesh, "dp")`` gives every rank the
  seed of its data-parallel coordinate: equal along the TP dimension, distinct along the DP one.
  (Draws also consume torch's default RNG, so seed it alike on a TP group, as torchtitan does.)
- **Sequence-parallel hidden states are gathered, not drawn per shard.** Between layers SP keeps
  the hidden states as a ``DTensor`` sharded on the sequence dimension. A dropping layer sees the
  whole sequence (``to_full``: an all-gather), keeps ``k`` of its ``s`` tokens exactly as the
  unsharded model would, and hands its inner layer the kept tokens sharded again on the sequence
  dimension (``to_sharded``: a local slice, no communication); its output is gathered, merged
  with the dropped tokens and sharded back. The draws are therefore those of a single-process
  run; the price is one all-gather of the layer's input and one of its output. Sharding ``k``
  tokens evenly needs ``k`` divisible by the SP degree: otherwise ``RandomLTDError``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from random_ltd.errors import RandomLTDError
from random_ltd.integrations.distributed import rank_seed


def data_parallel_index(mesh: Any, dp_dims: str | Sequence[str]) -> int:
    """This rank's index among the data-parallel groups of ``mesh`` (its coordinate on ``dp_dims``).

    Several names (``("dp_replicate", "dp_shard")``) are flattened in the order given, as one index.
    """
    names = (dp_dims,) if isinstance(dp_dims, str) else tuple(dp_dims)
    known = mesh.mesh_dim_names or ()
    missing = [name for name in names if name not in known]
    if not names or missing:
        raise RandomLTDError(f"data-parallel dimension(s) {missing or names!r} not in this mesh's dimensions {known!r}")
    index = 0
    for name in names:
        index = index * mesh.size(known.index(name)) + mesh.get_local_rank(name)
    return index


def mesh_rank_seed(base_seed: int, mesh: Any, dp_dims: str | Sequence[str]) -> int:
    """The random-LTD seed of this rank: ``rank_seed(base_seed, data_parallel_index(mesh, dp_dims))``.

    Equal on every rank of a tensor-parallel (and pipeline, context-parallel) group, distinct
    across data-parallel groups; pass it to ``random_ltd.apply(model, seed=...)``.
    """
    return rank_seed(base_seed, data_parallel_index(mesh, dp_dims))



