"""FlexAttention masks of the kept tokens: what building them costs per forward.

``flex_mask_cost(...)`` times, for each kept length, the kept ``BlockMask``s one forward of a
``layers``-deep dropping stack builds, from masks made as transformers makes them:

- ``shared``: causal, unpadded — built once per forward and kept length, the other layers reuse it;
- ``padded``: causal with padding — one per dropping layer (the kept tokens differ per layer);
- ``documents``: causal within packed documents — one per layer;
- ``window``: sliding-window causal (window ``seq_len // 4``) — one per layer;
- ``padded_vmap``: the padded masks built by ``create_block_mask`` (its ``vmap`` over every
  ``(b, h, q, kv)``), what random-LTD did before building them from one broadcast evaluation;
- ``attention``: one flex attention forward at the kept length, for scale (``None`` where flex
  attention cannot run eagerly, e.g. without a compiler for the device).

Each forward gets a fresh model mask (built untimed), as a model builds one per forward. Times are the median
over ``repeats`` interleaved rounds (``random_ltd.bench.timing``), in milliseconds per forward.
``scripts/gpu-check`` runs it at real shapes on a GPU; ``flex_mask_table`` renders the rows.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from random_ltd import ops
from random_ltd.attention.flex import compose_mask_mod, gather_block_mask
from random_ltd.bench.timing import interleaved

KINDS = ("shared", "padded", "documents", "window")


def _model_mask_mods(batch: int, seq_len: int, device: torch.device, generator: torch.Generator) -> dict:
    """The ``mask_mod`` transformers hands flex for each kind of batch (``masking_utils``)."""
    from transformers import masking_utils as mu

    valid = torch.arange(seq_len) < torch.randint(seq_len // 2, seq_len + 1, (batch, 1), generator=generator)
    documents = torch.randint(0, 4, (batch, seq_len), generator=generator).sort(dim=1).values
    valid, documents = valid.to(device), documents.to(device)
    base = {
        "shared": mu.causal_mask_function,
        "padded": mu.and_masks(mu.causal_mask_function, mu.padding_mask_function(valid)),
        "documents": mu.and_masks(mu.causal_mask_function, mu.packed_sequence_mask_function(documents)),
        "window": mu.sliding_window_causal_mask_function(max(seq_len // 4, 1)),
    }
    return {kind: mu.add_offsets_to_mask_function(mask_mod, 0, 0) for kind, mask_mod in base.items()}


def _one_forward(mask_mod, batch: int, seq_len: int, keep: int, layers: int, device: torch.device,
                 generator: torch.Generator, forwards: int, gather=gather_block_mask) -> Callable[[], None]:
    """A forward's kept masks: one gather per dropping layer (each its own draw) from the forward's model
    mask. The model masks are built beforehand, untimed: one per forward, as a model does."""
    from torch.nn.attention.flex_attention import create_block_mask

    draws = [ops.keep_top(torch.rand(batch, seq_len, generator=generator), keep).to(device) for _ in range(layers)]
    model_masks = [create_block_mask(mask_mod, batch, None, seq_len, seq_len, device=device)
                   for _ in range(forwards)]

    def run() -> None:
        model_mask = model_masks.pop()
        for indices in draws:
            gather(model_mask, indices, seq_len)

    return run


def _vmap_gather(model_mask, indices: torch.Tensor, seq_len: int):
    from torch.nn.attention.flex_attention import create_block_mask

    batch, keep = indices.shape
    kept_mod = compose_mask_mod(model_mask.mask_mod, indices, source_batch=model_mask.shape[0])
    return create_block_mask(kept_mod, batch, model_mask.shape[1], keep, keep, device=indices.device,
                             BLOCK_SIZE=model_mask.BLOCK_SIZE)


def _attention(batch: int, heads: int, keep: int, head_dim: int, device: torch.device,
               dtype: torch.dtype) -> Callable[[], None] | None:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q = torch.randn(batch, heads, keep, head_dim, device=device, dtype=dtype)
    mask = create_block_mask(lambda b, h, qi, kv: kv <= qi, batch, None, keep, keep, device=device)
    try:
        flex_attention(q, q, q, block_mask=mask)
    except Exception:  # noqa: BLE001 - no eager flex attention on this device: the column stays empty
        return None
    return lambda: flex_attention(q, q, q, block_mask=mask)


def flex_mask_cost(seq_len: int, keeps: Sequence[int], *, batch: int = 1, layers: int = 4, heads: int = 8,
                   head_dim: int = 64, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   repeats: int = 3, seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Milliseconds per forward of the kept ``BlockMask``s of a ``layers``-deep dropping stack.

    Returns ``{"device", "seq_len", "batch", "layers", "heads", "head_dim", "rows": [{"keep",
    "shared_ms", "padded_ms", "documents_ms", "window_ms", "padded_vmap_ms", "attention_ms"}, ...]}``.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    mask_mods = _model_mask_mods(batch, seq_len, device, generator)
    rows = []
    for keep in keeps:
        variants = {kind: _one_forward(mask_mods[kind], batch, seq_len, keep, layers, device, generator,
                                       forwards=repeats + 1)  # + the warm-up call
                    for kind in KINDS}
        variants["padded_vmap"] = _one_forward(mask_mods["padded"], batch, seq_len, keep, layers, device, generator,
                                               forwards=repeats + 1, gather=_vmap_gather)
        attention = _attention(batch, heads, keep, head_dim, device, dtype)
        if attention is not None:
            variants["attention"] = attention
        timings = interleaved(variants, repeats, device, seed=seed)
        row = {"keep": keep, "attention_ms": None}
        row.update({f"{name}_ms": timing.median("wall") * 1e3 for name, timing in timings.items()})
        rows.append(row)
        if progress is not None:
            progress(f"flex masks: kept {keep} of {seq_len}: " + ", ".join(
                f"{kind} {row[f'{kind}_ms']:.2f} ms" for kind in KINDS))
    return {"device": str(device), "seq_len": seq_len, "batch": batch, "layers": layers, "heads": heads,
            "head_dim": head_dim, "rows": rows}


def flex_mask_table(result: dict) -> str:
    """A markdown table of ``flex_mask_cost``'s rows (ms per forward; attention: one layer)."""
    lines = [f"Kept-token flex masks per forward of {result['layers']} dropping layers, sequence "
             f"{result['seq_len']}, batch {result['batch']}, on {result['device']} (median ms):", "",
             "| kept | shared (1 build) | padded | documents | window | padded by vmap | vmap / ours | "
             "one flex attention |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        attention = "n/a" if row["attention_ms"] is None else f"{row['attention_ms']:.2f}"
        cells = " | ".join(f"{row[f'{kind}_ms']:.2f}" for kind in KINDS)
        ratio = row["padded_vmap_ms"] / row["padded_ms"]
        lines.append(f"| {row['keep']} | {cells} | {row['padded_vmap_ms']:.2f} | {ratio:.1f}x | {attention} |")
    return "\n".join(lines) + "\n"
