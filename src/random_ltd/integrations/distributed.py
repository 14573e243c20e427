"""Random-LTD under ``torch.distributed``: DDP and FSDP2.

Three rules make data-parallel random-LTD correct (docs/integrations.md):

- **Each rank draws its own indices**: give each rank its own seed, ``rank_seed(base, rank)``.
  With one seed on every rank, all replicas would drop the same positions of their (different)
  sequences: still valid, but the draws are no longer independent across the global batch.
- **Every rank uses the same kept length**: the schedule is a pure function of the optimizer
  step, which all ranks share; ``check_kept_lengths_agree`` verifies it.
- **Nothing else changes**: a dropping layer still runs every parameter (on fewer tokens), so
  DDP needs no ``find_unused_parameters`` and gradients are averaged as usual.

FSDP2 (``torch.distributed.fsdp.fully_shard``) swaps a module's class to ``FSDP<Class>``, as
random-LTD swaps it to a dropping subclass; both orders train identically, but only
"shard first, then ``random_ltd.apply``" leaves ``random_ltd.remove`` able to restore the
sharded class. ``shard_layers`` shards the layers random-LTD wraps (and the root) and, when
random-LTD was applied first, re-applies it on top of the sharded classes, so either order ends
in the same state.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Any, NoReturn

import torch.distributed as dist
import torch.nn as nn

from random_ltd.api import RandomLTDHandle, find_layer_stack, get_handle
from random_ltd.errors import RandomLTDError
from random_ltd.integrations.common import check_seed, ensure_applied
from random_ltd.layer import is_wrapped, layer_state, unwrap_layer, wrap_layer
from random_ltd.layer_selection import LayerSelection
from random_ltd.rng import derive_seed


def exit_process(exit_code: int | None = 0) -> NoReturn:
    """End this process: destroy the default process group, then, in a launched worker, leave
    without the interpreter's teardown (``atexit`` handlers still run; close your files first).

    Why: gloo's worker threads outlive ``destroy_process_group`` while anything (DDP's reducer,
    FSDP's state, a work handle) still holds the group. A worker thread that drops its last work
    item releases a Python object, so it takes the GIL; if the interpreter is finalizing by then,
    Python ends that thread with ``pthread_exit``, whose unwinding through a ``noexcept`` C++
    destructor calls ``std::terminate``: SIGABRT, "terminate called without an active exception".
    ``os._exit`` skips finalization, so no thread ever meets it. Outside torchrun (no
    ``WORLD_SIZE`` > 1 and no process group) this is ``sys.exit(exit_code)``.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or (dist.is_available() and dist.is_initialized())
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if not launched:
        sys.exit(exit_code)
    atexit._run_exitfuncs()  # what a normal exit runs before finalizing
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code or 0)


def current_rank() -> int:
    """This process's rank in the default process group (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_seed(base_seed: int, rank: int | None = None) -> int:
    """The random-LTD seed of ``rank`` (default: this process's rank) derived from ``base_seed``.

    Different ranks get well-separated seeds; the same ``(base_seed, rank)`` always gives the
    same seed, so a run restarted on the same number of ranks draws the same indices.
    """
    check_seed(base_seed, "base_seed", optional=False)
    rank = check_seed(current_rank() if rank is None else rank, "rank", optional=False)
    return derive_seed(base_seed, rank)


def load_rank_state(driver: Any, state: dict) -> None:
    """``driver.load_state_dict(state)`` for a state saved by any rank, keeping this rank's seed.

    Checkpoints are usually written by rank 0 only. Its counters (step, layer-tokens, the LR
    scheduler, the handle's kept length) are the same on every rank and are restored; its
    seed is rank 0's, so every rank keeps the seed its handle already has.
    """
    handle = driver.handle
    seeded = hasattr(handle, "seed")  # a TokenBypass handle draws nothing: no seed
    own_seed = handle.seed if seeded else None
    driver.load_state_dict(state)
    if seeded:
        handle.load_state_dict({**state["handle"], "seed": own_seed})


def apply_on_rank(model: Any, layers: LayerSelection, *, base_seed: int, rank: int, stack: str | None = None,
                  keep_prefix_tokens: bool = False) -> RandomLTDHandle:
    """``ensure_applied`` with this rank's own seed, ``rank_seed(base_seed, rank)``."""
    return ensure_applied(model, layers, seed=rank_seed(base_seed, rank), stack=stack,
                          keep_prefix_tokens=keep_prefix_tokens)


def resume_rank_state(driver: Any, saved: dict) -> None:
    """``load_rank_state`` of a checkpointed driver state, keeping the schedule given today over the saved one."""
    load_rank_state(driver, {**saved, "schedule": driver.schedule.state_dict()})


def check_kept_lengths_agree(handle: RandomLTDHandle, group: Any = None) -> int | None:
    """Raise unless every rank of ``group`` has the same kept length; return it.

    A collective call: every rank must call it. Useful after ``Driver.before_step()`` while
    setting a run up (ranks that disagree would train on differently shaped layers).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return handle.keep
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, handle.keep, group=group)
    if len(set(gathered)) != 1:
        raise RandomLTDError(f"ranks disagree on the kept length: {gathered} (rank order); drive every rank "
                             "with the same schedule and the same step")
    return handle.keep


def shard_layers(model: nn.Module, *, stack: str | None = None, **fully_shard_kwargs: Any) -> list[str]:
    """FSDP2-shard each transformer layer of ``model`` (found as ``random_ltd.apply`` finds them), then the root.

    Works before or after ``random_ltd.apply``: layers that already drop tokens are unwrapped,
    sharded and wrapped again with the same settings, so the handle stays valid and
    ``random_ltd.remove`` later restores the sharded ``FSDP<Layer>`` class. Extra keyword
    arguments go to every ``fully_shard`` call (``mesh``, ``reshard_after_forward``,
    ``mp_policy``, ...). Returns the names of the sharded layers.
    """
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415  (needs torch.distributed)

    handle = get_handle(model)
    if stack is None and handle is not None:
        stack = handle.stack_name
    _, members = find_layer_stack(model, stack)
    for _, layer in members:
        _shard_layer(layer, fully_shard, fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    return [name for name, _ in members]


def _shard_layer(layer: nn.Module, fully_shard: Any, kwargs: dict) -> None:
    if not is_wrapped(layer):
        fully_shard(layer, **kwargs)
        return
    state = layer_state(layer)
    unwrap_layer(layer)
    fully_shard(layer, **kwargs)
    wrap_layer(layer, state.adapter, state.position, state.control, state.info.name)
