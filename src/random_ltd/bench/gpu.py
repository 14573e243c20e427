"""Layer stacks at real shapes for ``scripts/gpu-check``: GPT-2 or Llama blocks, sdpa or flex, eager or compiled.

Like ``bench.stack`` (which it reuses for timing, figures and memory), one training step of a stack is
timed three ways: (a) full length, (b) random-LTD at kept length k on layers 1..L-2, (c) the ideal, the
middle layers on one contiguous slice of k tokens. Each step builds what a model builds once per
forward before its layers: the positions, Llama's rotary table, and under flex the causal
``BlockMask`` (the ideal builds one more, at length k, once). What random-LTD builds inside its layers
(a ``BlockMask`` per kept length) is its own cost, counted and timed apart by ``mask_builds``.

Compiled stacks compile each block on its own (``block.compile(fullgraph=True)``, as torchtitan does).
Written against torch >= 2.11 and transformers >= 5.17: layers are called with keyword arguments only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from collections.abc import Callable

import torch
import torch.nn as nn

import random_ltd
from random_ltd.bench import sections
from random_ltd.bench.memory import measure_step
from random_ltd.bench.stack import StackBench, autocast
from random_ltd.bench.timing import interleaved, synchronize

DROP_LAYERS = "1:-1"


@dataclasses.dataclass(frozen=True)
class GpuShape:
    name: str
    family: str  # "gpt2" or "llama"
    hidden: int
    heads: int
    layers: int
    seq_len: int
    batch: int
    kv_heads: int | None = None  # llama: grouped-query attention
    ffn: int | None = None  # llama: SwiGLU width

    def flops(self, kept: int | None) -> int:
        """Training-step FLOPs (``random_ltd.flops_per_step``); SwiGLU's three matrices count as a 1.5x
        wider two-matrix FFN, grouped-query K/V projections in full (an over-count of a few %)."""
        ffn = None if self.ffn is None else self.ffn * 3 // 2
        return random_ltd.flops_per_step(self.seq_len, self.batch, self.layers, self.hidden, kept=kept,
                                         drop_layers=self.layers - 2, ffn_dim=ffn)


GPT2_MEDIUM = GpuShape("gpt2-medium", "gpt2", hidden=1024, heads=16, layers=24, seq_len=2048, batch=4)
LLAMA_1B = GpuShape("llama-1b", "llama", hidden=2048, heads=32, layers=16, seq_len=2048, batch=2, kv_heads=8,
                    ffn=8192)
TINY_GPT2 = GpuShape("tiny-gpt2", "gpt2", hidden=64, heads=2, layers=4, seq_len=128, batch=2)
TINY_LLAMA = GpuShape("tiny-llama", "llama", hidden=64, heads=4, layers=4, seq_len=128, batch=1, kv_heads=2, ffn=128)
KEPT = (128, 512, 1024, 1536)


def build_layers(shape: GpuShape, attention: str) -> tuple[list[nn.Module], nn.Module | None]:
    """The blocks (random weights) and, for Llama, the rotary embedding."""
    if shape.family == "gpt2":
        from transformers import GPT2Config
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block

        config = GPT2Config(n_embd=shape.hidden, n_head=shape.heads, n_layer=shape.layers, n_positions=shape.seq_len,
                            resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0, attn_implementation=attention)
        return [GPT2Block(config, layer_idx=i) for i in range(shape.layers)], None
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=shape.hidden, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                         intermediate_size=shape.ffn, num_hidden_layers=shape.layers,
                         max_position_embeddings=shape.seq_len, attn_implementation=attention)
    return [LlamaDecoderLayer(config, layer_idx=i) for i in range(shape.layers)], LlamaRotaryEmbedding(config)


def causal_block_mask(length: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(lambda b, h, q, kv: kv <= q, None, None, length, length, device=device)


class RealStack(nn.Module):
    """Blocks in sequence; ``forward(hidden, length_inputs) -> hidden``; see ``inputs`` for what they get."""

    def __init__(self, shape: GpuShape, attention: str) -> None:
        super().__init__()
        self.shape, self.attention = shape, attention
        layers, rotary = build_layers(shape, attention)
        self.layers = nn.ModuleList(layers)
        self.rotary = rotary

    def inputs(self, hidden: torch.Tensor, length: int) -> dict:
        """The per-forward inputs of a ``length``-token sequence: positions, mask, rotary table."""
        positions = torch.arange(length, device=hidden.device).unsqueeze(0)
        kwargs = {"position_ids": positions, "use_cache": False,
                  "attention_mask": causal_block_mask(length, hidden.device) if self.attention == "flex_attention"
                  else None}
        if self.rotary is not None:
            kwargs["position_embeddings"] = self.rotary(hidden[:, :length], positions)
        return kwargs

    def forward(self, hidden: torch.Tensor, prepared: dict | None = None) -> torch.Tensor:
        kwargs = self.inputs(hidden, hidden.shape[1]) if prepared is None else prepared
        for layer in self.layers:
            hidden = layer(hidden, **kwargs)
        return hidden

    def ideal(self, hidden: torch.Tensor, keep: int) -> torch.Tensor:
        """First and last block at full length, the middle ones on the first ``keep`` tokens."""
        first, *middle, last = self.layers
        full = self.inputs(hidden, hidden.shape[1])
        hidden = first(hidden, **full)
        kept, rest = hidden[:, :keep], hidden[:, keep:]
        short = self.inputs(kept, keep)
        for layer in middle:
            kept = layer(kept, **short)
        return last(torch.cat([kept, rest], dim=1), **full)


class RealStackBench:
    """A ``RealStack`` with random-LTD applied, its inputs, and the three variants as training steps."""

    def __init__(self, shape: GpuShape, attention: str, device: torch.device, dtype: torch.dtype,
                 compile_backend: str | None = None, seed: int = 0) -> None:
        self.shape, self.device, self.dtype = shape, device, dtype
        torch.manual_seed(seed)
        self.stack = RealStack(shape, attention).to(device).train()
        self.handle = random_ltd.apply(self.stack, layers=DROP_LAYERS, seed=seed)
        self.compiled = compile_backend is not None  # then mask builds are traced into the blocks' graphs
        if self.compiled:
            for layer in self.stack.layers:  # per block, after apply, as torchtitan compiles
                layer.compile(backend=compile_backend, fullgraph=True)
        generator = torch.Generator().manual_seed(seed)
        size = (shape.batch, shape.seq_len, shape.hidden)
        self.inputs = torch.randn(size, generator=generator).to(device).requires_grad_(True)
        self.upstream = torch.randn(size, generator=generator).to(device)
        self.backward = device.type == "cuda" or attention != "flex_attention"  # no flex backward on a CPU

    def _step(self, keep: int | None, forward: Callable[[], torch.Tensor]) -> None:
        self.handle.set_keep(keep)
        self.stack.zero_grad(set_to_none=True)
        self.inputs.grad = None
        with autocast(self.device, self.dtype), (contextlib.nullcontext() if self.backward else torch.no_grad()):
            output = forward()
        if self.backward:
            output.backward(self.upstream.to(output.dtype))

    def full(self) -> None:
        self._step(None, lambda: self.stack(self.inputs))

    def random_ltd(self, keep: int, prepared: dict | None = None) -> None:
        self._step(keep, lambda: self.stack(self.inputs, prepared))

    def ideal(self, keep: int) -> None:
        self._step(None, lambda: self.stack.ideal(self.inputs, keep))

    variants = StackBench.variants  # the same full / ltd@k / ideal@k steps as the CPU bench


def measure(bench: RealStackBench, keeps: list[int], repeats: int, warmup: int,
            progress: Callable[[str], None]) -> dict:
    """Timing, figures against the ideal and the FLOP saving, peak memory, mask builds, host syncs."""
    timings = interleaved(bench.variants(keeps), repeats, bench.device, warmup=warmup, progress=progress)
    full, shape = timings["full"], bench.shape
    rows = []
    for keep in keeps:
        ltd, ideal = timings[f"ltd@{keep}"], timings[f"ideal@{keep}"]
        flop_saving = 1 - shape.flops(keep) / shape.flops(None)
        saving = 1 - ltd.median("wall") / full.median("wall")
        rows.append({"keep": keep, **sections.keep_figures(full, ltd, ideal, "wall"), "saving_median": saving,
                     "flop_saving": flop_saving, "saving_over_flop_saving": saving / flop_saving})
    progress("peak memory")
    memory = {"full": measure_step(bench.full, bench.device)}
    for keep in keeps:
        memory[f"ltd@{keep}"] = measure_step(lambda keep=keep: bench.random_ltd(keep), bench.device)
        memory[f"ideal@{keep}"] = measure_step(lambda keep=keep: bench.ideal(keep), bench.device)
    for row in rows:
        row["peak_bytes"] = {name: memory[f"{name}@{row['keep']}"]["step_peak_bytes"] for name in ("ltd", "ideal")}
    progress("mask builds and host syncs")
    return {"shape": dataclasses.asdict(shape), "backward": bench.backward, "full": full.to_json(),
            "full_peak_bytes": memory["full"]["step_peak_bytes"], "keeps": rows,
            "mask_builds": None if bench.compiled else mask_builds(lambda: bench.random_ltd(keeps[0]), bench.device,
                                                                  shape.seq_len),
            "host_syncs": host_syncs(bench, keeps[0])}


def mask_builds(step: Callable[[], None], device: torch.device, seq_len: int) -> dict:
    """``BlockMask`` builds during one step, each timed (device synchronised around it): ``count`` /
    ``seconds`` every build, ``kept_*`` random-LTD's kept-length masks (``attention.flex.build_block_mask``,
    whichever way it builds them), the rest the model's own (``create_block_mask``)."""
    import torch.nn.attention.flex_attention as torch_flex

    from random_ltd.attention import flex as kept_flex

    model_builds, kept_builds, inside_kept = [], [], []

    def timed(original, builds, is_kept):
        def build(*args, **kwargs):
            if inside_kept:  # create_block_mask as random-LTD's fallback: counted once, as a kept build
                return original(*args, **kwargs)
            inside_kept.extend([True] if is_kept else [])
            synchronize(device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                synchronize(device)
                builds.append(time.perf_counter() - start)
                inside_kept.clear()
        return build

    patches = [(torch_flex, "create_block_mask", model_builds, False),
               (kept_flex, "build_block_mask", kept_builds, True)]
    originals = [getattr(module, name) for module, name, _, _ in patches]
    for (module, name, builds, is_kept), original in zip(patches, originals, strict=True):
        setattr(module, name, timed(original, builds, is_kept))
    try:
        step()
    finally:
        for (module, name, _, _), original in zip(patches, originals, strict=True):
            setattr(module, name, original)
    every = model_builds + kept_builds
    return {"count": len(every), "seconds": sum(every), "kept_count": len(kept_builds),
            "kept_seconds": sum(kept_builds), "kept_max_seconds": max(kept_builds, default=0.0)}


def host_syncs(bench: RealStackBench, keep: int) -> dict:
    """One random-LTD step under ``torch.cuda.set_sync_debug_mode("error")`` (the first host sync
    raises); the model's per-forward inputs (positions, rotary table, full-length mask) are built
    before, outside the check."""
    if bench.device.type != "cuda":
        return {"checked": False, "reason": "set_sync_debug_mode needs CUDA"}
    prepared = bench.stack.inputs(bench.inputs, bench.shape.seq_len)
    synchronize(bench.device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        bench.random_ltd(keep, prepared)
    except RuntimeError as error:
        return {"checked": True, "sync_free": False, "error": str(error).splitlines()[0][:300],
                "where": _innermost_frames(error)}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return {"checked": True, "sync_free": True}


def _innermost_frames(error: BaseException, count: int = 4) -> list[str]:
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if "/torch/" not in frame.filename]
    return [f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} in {frame.name}" for frame in frames[-count:]]
