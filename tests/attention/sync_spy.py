"""A local host-sync spy for the attention tests: the calls that would block the host on a GPU.

Counts, while a function runs on CPU tensors, the Python-level calls that read a tensor on the host
(``item``, ``tolist``, ``bool``, ``int``, ...) and the operators whose output size depends on data
(``nonzero``, ``unique_consecutive``, ...) or that copy a scalar out (``_local_scalar_dense``).
The project-wide audit of every path lives with the CUDA checks; this one stays small and local.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_SYNCING_CALLS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
                  torch.Tensor.__index__, torch.Tensor.__float__, torch.Tensor.cpu, torch.Tensor.numpy}
_SYNCING_OPS = {"_local_scalar_dense", "nonzero", "unique_consecutive", "_unique2", "unique_dim", "masked_select",
                "is_nonzero"}


class _SyncSpy(TorchFunctionMode):
    """Counts the calls that would block the host on a GPU (local to this test; see tests/test_sync.py on CUDA)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING_CALLS:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


class _SyncOpSpy(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in _SYNCING_OPS:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def syncs(function) -> list[str]:
    """Names of the syncing calls ``function()`` makes, in order."""
    with _SyncSpy() as calls, _SyncOpSpy() as ops_seen:
        function()
    return calls.seen + ops_seen.seen
