"""What ``random-ltd bench`` measures: shapes, kept lengths, repeats, device; validated on construction."""
from __future__ import annotations

import dataclasses

import torch

from random_ltd.bench.timing import CLOCKS

SECTIONS = ("stack", "train", "memory", "run", "compile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _positive(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(owner).__name__}.{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class StackShape:
    """A stack of GPT-2 blocks; the first and last run at full length, the middle ones drop."""

    name: str
    hidden: int
    heads: int
    layers: int
    seq_len: int
    batch: int

    def __post_init__(self) -> None:
        _positive(self, "hidden", "heads", "layers", "seq_len", "batch")
        if self.hidden % self.heads:
            raise ValueError(f"StackShape.hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.layers < 3:
            raise ValueError(f"StackShape.layers must be >= 3 (first and last stay full), got {self.layers}")

    def keeps(self, fractions: tuple[float, ...]) -> list[int]:
        return sorted({max(1, round(self.seq_len * fraction)) for fraction in fractions})


@dataclasses.dataclass(frozen=True)
class GptShape:
    """The ``gpt`` task's model and batch; defaults are the task's (``--model-size small``)."""

    layers: int = 6
    hidden: int = 192
    heads: int = 4
    vocab: int = 4096
    seq_len: int = 128
    batch: int = 16
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _positive(self, "layers", "hidden", "heads", "vocab", "seq_len", "batch")
        if self.hidden % self.heads:
            raise ValueError(f"GptShape.hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.layers < 3:
            raise ValueError(f"GptShape.layers must be >= 3 (first and last stay full), got {self.layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GptShape.dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class RunShape:
    """A whole MSLG run (the ``gpt`` task's defaults): kept length ``start``, +``increment`` per
    interval, full length at the fraction ``full_at`` of ``steps``."""

    steps: int = 300
    start: int = 16
    increment: int = 4
    full_at: float = 0.7

    def __post_init__(self) -> None:
        _positive(self, "steps", "start", "increment")
        if not 0.0 < self.full_at <= 1.0:
            raise ValueError(f"RunShape.full_at must be a fraction in (0, 1], got {self.full_at}")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    stack_shapes: tuple[StackShape, ...]
    gpt: GptShape = GptShape()
    run: RunShape = RunShape()
    keep_fractions: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2, 3 / 4)
    memory_fractions: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2, 3 / 4)
    repeats: int = 5
    warmup: int = 1
    sections: tuple[str, ...] = SECTIONS
    device: str = "cpu"
    dtype: str = "fp32"
    threads: int | None = None
    clock: str = "wall"
    compile_backend: str = "eager"
    compile_multiple: int = 16
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        _positive(self, "repeats", "compile_multiple")
        if self.warmup < 0:
            raise ValueError(f"BenchConfig.warmup must be >= 0, got {self.warmup}")
        for name in ("keep_fractions", "memory_fractions"):
            fractions = getattr(self, name)
            if not fractions or not all(0 < fraction < 1 for fraction in fractions):
                raise ValueError(f"BenchConfig.{name} must be fractions in (0, 1), got {fractions}")
        unknown = set(self.sections) - set(SECTIONS)
        if unknown or not self.sections:
            raise ValueError(f"BenchConfig.sections must be a non-empty subset of {SECTIONS}, got {self.sections}")
        if self.dtype not in DTYPES:
            raise ValueError(f"BenchConfig.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.threads is not None:
            _positive(self, "threads")
        if self.clock not in CLOCKS:
            raise ValueError(f"BenchConfig.clock must be one of {CLOCKS}, got {self.clock!r}")
        if self.clock == "cpu" and (self.threads != 1 or torch.device(self.device).type != "cpu"):
            raise ValueError("BenchConfig.clock='cpu' (process CPU time) stands for the wall-clock of an "
                             "undisturbed run only on a CPU device with threads=1")
        torch.device(self.device)  # raises on a malformed device string

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


GPT2_SMALL = StackShape("gpt2-small", hidden=768, heads=12, layers=12, seq_len=1024, batch=1)
CPU_SHAPE = StackShape("cpu-d256", hidden=256, heads=4, layers=12, seq_len=1024, batch=2)
GPT2_MEDIUM = StackShape("gpt2-medium", hidden=1024, heads=16, layers=24, seq_len=1024, batch=4)
QUICK_SHAPE = StackShape("quick", hidden=64, heads=2, layers=4, seq_len=128, batch=2)


STACK_SHAPES = {shape.name: shape for shape in (GPT2_SMALL, CPU_SHAPE, GPT2_MEDIUM, QUICK_SHAPE)}


def default_config(**overrides) -> BenchConfig:
    return BenchConfig(**{"stack_shapes": (GPT2_SMALL, CPU_SHAPE), **overrides})


def quick_config(**overrides) -> BenchConfig:
    """Seconds on 2 cores: for CI, checks the machinery, not the figures."""
    settings = dict(
        stack_shapes=(QUICK_SHAPE,),
        gpt=GptShape(layers=3, hidden=64, heads=2, vocab=256, seq_len=64, batch=2),
        run=RunShape(steps=8, start=16, increment=16, full_at=0.5),
        keep_fractions=(1 / 4, 1 / 2),
        memory_fractions=(1 / 4,),
        repeats=2,
        threads=1,  # tiny ops gain nothing from a second thread, and lose much when cores are shared
        sections=("stack", "train", "memory", "run"),  # compile: Dynamo tracing alone takes ~10 s
        quick=True,
    )
    settings.update(overrides)
    return BenchConfig(**settings)
