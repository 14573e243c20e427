"""Counting what would block the host on a GPU, on any device (the CPU included).

``audit()`` is a context manager that records every call which, on a CUDA device, waits for the
device or copies from the host:

- ``sync``: ``Tensor.item``, ``tolist``, ``numpy``, ``cpu``, ``to(<cpu>)``, ``__bool__``, ``__int__``,
  ``__index__``, ``__float__``; and ops whose output size depends on the data (``nonzero``, boolean-mask
  indexing, ``masked_select``, ``unique``/``unique_consecutive``, ``repeat_interleave`` without
  ``output_size``, ``bincount``, ...), and ``torch.equal`` / ``is_nonzero``;
- ``host_to_device``: ``torch.tensor`` / ``as_tensor`` of Python data (on a GPU: a copy from pageable
  host memory each call).

Two modes do the watching. A ``TorchFunctionMode`` sees the Python-level calls, which on a CPU tensor
dispatch nothing (``tolist``, ``cpu``); a ``TorchDispatchMode`` sees the aten ops, also those reached
inside torch's own Python code. A scalar read counted at the Python level is not counted again when
it reaches ``aten._local_scalar_dense``.

Each record is attributed by the Python stack: ``owner`` is ``"random_ltd"`` when the innermost frame
outside torch and the standard library is in ``src/random_ltd`` (random-LTD's own call, or a torch
function it called), else ``"model"`` (transformers, the test). ``layer`` is the dropping layer whose
forward is on the stack (``None``: outside every dropping layer, i.e. once per forward). During
backward the live stack only shows the ``.backward()`` call, so with ``forward_traces=True`` (anomaly
mode) a backward op is attributed by the forward stack autograd recorded for its node.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import sysconfig
import threading

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import random_ltd
from random_ltd.layer import RandomLTDLayerMixin

_RANDOM_LTD_DIR = os.path.dirname(os.path.abspath(random_ltd.__file__)) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep
_THIS_FILE = os.path.abspath(__file__)
_LAYER_FORWARD = RandomLTDLayerMixin.forward.__code__
_TRACE_LINE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)')

HOST_READS = frozenset({"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__index__", "__float__",
                        "__complex__"})
DATA_DEPENDENT_OPS = frozenset({"nonzero", "nonzero_numpy", "argwhere", "masked_select", "unique", "_unique",
                                "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
                                "bincount", "histc", "is_nonzero", "equal", "_local_scalar_dense"})
INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl", "_index_put_impl_"})
HOST_DATA_FACTORIES = frozenset({"tensor", "as_tensor"})


@dataclasses.dataclass(frozen=True)
class SyncRecord:
    kind: str  # "sync" or "host_to_device"
    call: str  # what was called: "item", "nonzero", "index(bool)", "tensor", ...
    owner: str  # "random_ltd" or "model"
    where: str  # "file.py:line in function" of the attributed frame
    layer: str | None  # the dropping layer on the stack, or None
    backward: bool


@dataclasses.dataclass
class SyncAudit:
    """What ``audit()`` recorded; ``layer_names`` maps layers to their names in the model."""

    records: list[SyncRecord] = dataclasses.field(default_factory=list)

    def select(self, kind: str = "sync", owner: str | None = None, in_layer: bool | None = None) -> list[SyncRecord]:
        return [record for record in self.records if record.kind == kind
                and (owner is None or record.owner == owner)
                and (in_layer is None or (record.layer is not None) == in_layer)]

    def per_layer(self, kind: str = "sync", owner: str = "random_ltd") -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.select(kind, owner, in_layer=True):
            counts[record.layer] = counts.get(record.layer, 0) + 1
        return counts

    def summary(self) -> dict:
        """Counts by kind, owner and place: ``{"sync": {"random_ltd": {"in_layers": n, "per_forward": m}, ...}}``."""
        result: dict = {}
        for kind in ("sync", "host_to_device"):
            result[kind] = {owner: {"in_layers": len(self.select(kind, owner, True)),
                                    "per_forward": len(self.select(kind, owner, False))}
                            for owner in ("random_ltd", "model")}
        return result

    def describe(self, owner: str | None = "random_ltd") -> str:
        lines = [f"{r.kind} {r.call} [{r.owner}] {'backward ' if r.backward else ''}at {r.where}"
                 f"{' in ' + r.layer if r.layer else ''}" for r in self.records if owner in (None, r.owner)]
        return "\n".join(lines) or "(none)"


class _Recorder:
    def __init__(self, forward_traces: bool) -> None:
        self.audit = SyncAudit()
        self.forward_traces = forward_traces
        self.local = threading.local()
        self.names: dict[int, str] = {}

    def counted_call(self):
        """While a Python-level host read runs: its aten scalar read is the same event."""
        return _Flag(self.local)

    def inside_counted_call(self) -> bool:
        return getattr(self.local, "depth", 0) > 0

    def record(self, kind: str, call: str) -> None:
        owner, where, layer = self._attribute()
        backward = torch._C._current_graph_task_id() != -1
        self.audit.records.append(SyncRecord(kind, call, owner, where, layer, backward))

    def _attribute(self) -> tuple[str, str, str | None]:
        frames = _live_frames()
        first = _first_outside_torch(frames)
        if first is None or (not first[0].startswith(_RANDOM_LTD_DIR) and self._in_backward_node()):
            traced = self._node_frames()
            if traced:
                frames = traced
                first = _first_outside_torch(frames)
        layer = next((self._layer_name(f) for f in frames if f[3] is not None), None)
        if first is None:
            return "model", "(torch only)", layer
        owner = "random_ltd" if first[0].startswith(_RANDOM_LTD_DIR) else "model"
        return owner, f"{os.path.basename(first[0])}:{first[1]} in {first[2]}", layer

    def _in_backward_node(self) -> bool:
        return self.forward_traces and torch._C._current_graph_task_id() != -1

    def _node_frames(self) -> list[tuple]:
        node = torch._C._current_autograd_node()
        trace = (getattr(node, "metadata", None) or {}).get("traceback_") if node is not None else None
        frames = []
        for entry in reversed(trace or []):  # innermost first, like the live stack
            match = _TRACE_LINE.search(entry)
            if match:
                in_layer = match["function"] == "forward" and match["file"] == _LAYER_FORWARD.co_filename
                frames.append((os.path.abspath(match["file"]), int(match["line"]), match["function"],
                               "(layer from trace)" if in_layer else None))
        return frames

    def _layer_name(self, frame_info: tuple) -> str:
        module = frame_info[3]
        if isinstance(module, str):
            return module
        return self.names.get(id(module), f"{type(module).__name__}@{id(module):x}")


class _Flag:
    def __init__(self, local) -> None:
        self.local = local

    def __enter__(self):
        self.local.depth = getattr(self.local, "depth", 0) + 1

    def __exit__(self, *exc):
        self.local.depth -= 1


def _live_frames() -> list[tuple]:
    """``(file, line, function, dropping layer module or None)``, innermost first."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        layer = frame.f_locals.get("self") if frame.f_code is _LAYER_FORWARD else None
        frames.append((os.path.abspath(frame.f_code.co_filename), frame.f_lineno, frame.f_code.co_name, layer))
        frame = frame.f_back
    return frames


def _first_outside_torch(frames: list[tuple]) -> tuple | None:
    for frame in frames:
        path = frame[0]
        if path == _THIS_FILE or path.startswith(_TORCH_DIR) or path.startswith("<") or _in_stdlib(path):
            continue
        return frame
    return None


def _in_stdlib(path: str) -> bool:
    return path.startswith(_STDLIB_DIR) and "-packages" + os.sep not in path


def _is_cpu_target(args, kwargs) -> bool:
    """``to`` a device named ``"cpu"`` in the code, or from a device tensor to the host. ``to(x.device)``
    on a CPU run reads like ``to(torch.device("cpu"))`` and is not counted: on a GPU it stays there."""
    source = args[0] if args and isinstance(args[0], torch.Tensor) else None
    targets = [target for target in (*args[1:], kwargs.get("device")) if isinstance(target, (str, torch.device))]
    leaves = source is not None and source.device.type != "cpu"
    return any(target == "cpu" or (leaves and torch.device(target).type == "cpu") for target in targets)


class _FunctionWatch(TorchFunctionMode):
    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        call = None
        if name in HOST_READS:
            call = name
        elif name == "to" and _is_cpu_target(args, kwargs):
            call = "to(cpu)"
        if call is not None:
            self.recorder.record("sync", call)
            with self.recorder.counted_call():
                return func(*args, **kwargs)
        if name in HOST_DATA_FACTORIES and args and not isinstance(args[0], torch.Tensor):
            self.recorder.record("host_to_device", name)
        return func(*args, **kwargs)


class _DispatchWatch(TorchDispatchMode):
    supports_higher_order_operators = True  # flex attention is one: passed through, its inside unseen

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not hasattr(func, "_schema"):
            return func(*args, **kwargs)
        call = _data_dependent(func, args, kwargs)
        if call is not None and not (call == "_local_scalar_dense" and self.recorder.inside_counted_call()):
            self.recorder.record("sync", call)
        return func(*args, **kwargs)


def _data_dependent(func, args, kwargs) -> str | None:
    name = func._schema.name.split("::")[-1]
    if name in DATA_DEPENDENT_OPS:
        return name
    if name == "repeat_interleave" and kwargs.get("output_size", args[3] if len(args) > 3 else None) is None:
        return "repeat_interleave(no output_size)"
    if name in INDEX_OPS and any(_is_boolean(index) for index in _indices(args)):
        return f"{name}(bool)"
    if name in ("_to_copy", "copy_", "to") and _device_to_host(name, args, kwargs):
        return f"{name}(to host)"
    return None


def _indices(args) -> list:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else []
    return [index for index in indices if isinstance(index, torch.Tensor)]


def _is_boolean(tensor: torch.Tensor) -> bool:
    return tensor.dtype in (torch.bool, torch.uint8)


def _device_to_host(name: str, args, kwargs) -> bool:
    if name == "copy_":
        destination, source = args[0], args[1]
        return destination.device.type == "cpu" and source.device.type != "cpu"
    source = args[0]
    device = kwargs.get("device")
    return device is not None and torch.device(device).type == "cpu" and source.device.type != "cpu"


@contextlib.contextmanager
def audit(model: torch.nn.Module | None = None, forward_traces: bool = False):
    """Record host syncs while the block runs; yields a ``SyncAudit``.

    ``model``: names the dropping layers in the records. ``forward_traces``: attribute backward ops by
    their forward's stack (turns on autograd's anomaly mode, without its NaN check).
    """
    recorder = _Recorder(forward_traces)
    if model is not None:
        recorder.names = {id(module): name for name, module in model.named_modules()}
    traces = torch.autograd.set_detect_anomaly(True, check_nan=False) if forward_traces else contextlib.nullcontext()
    with traces, _FunctionWatch(recorder), _DispatchWatch(recorder):
        yield recorder.audit


def unwatched(function):
    """``function`` run without the aten-level watch: for kernels that ``torch.compile`` themselves
    (transformers' flex attention), which refuse to trace under a dispatch mode. Python-level reads
    inside stay watched."""
    from torch.utils._python_dispatch import _disable_current_modes

    def run_unwatched(*args, **kwargs):
        with _disable_current_modes():
            return function(*args, **kwargs)

    return run_unwatched


def pretend_flash(monkeypatch) -> None:
    """Make random-LTD's attention-implementation lookup answer flash while transformers runs sdpa: the
    flash varlen metadata path without the flash kernel (which needs CUDA and the flash-attn package)."""
    from random_ltd.attention import other_inputs as attention_inputs

    if hasattr(attention_inputs, "AttentionSetup"):  # the lookup done once per wrap
        flash = property(lambda setup: "flash_attention_2")
        monkeypatch.setattr(attention_inputs.AttentionSetup, "implementation", flash)
    else:
        monkeypatch.setattr(attention_inputs, "attention_implementation", lambda layer: "flash_attention_2")
