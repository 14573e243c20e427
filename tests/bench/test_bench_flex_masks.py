"""The flex mask cost section: one build per forward for shared masks, one per layer otherwise, figures out."""
from __future__ import annotations

import torch

from random_ltd.attention import flex
from random_ltd.bench import flex_masks

torch.set_num_threads(1)


def _count_builds(monkeypatch, seq_len):
    """Kept-token ``BlockMask`` builds (``random_ltd.attention.flex.build_block_mask``) at a kept length."""
    built = []
    original = flex.build_block_mask

    def counting(mask_mod, batch, heads, query_len, *args, **kwargs):
        if query_len != seq_len:
            built.append(query_len)
        return original(mask_mod, batch, heads, query_len, *args, **kwargs)

    monkeypatch.setattr(flex, "build_block_mask", counting)
    return built


def test_each_kind_builds_what_a_forward_of_the_stack_builds(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    mask_mods = flex_masks._model_mask_mods(2, 64, torch.device("cpu"), generator)
    for kind, expected in (("shared", 1), ("padded", 3), ("documents", 3), ("window", 3)):
        forward = flex_masks._one_forward(mask_mods[kind], 2, 64, 20, 3, torch.device("cpu"), generator, forwards=1)
        built = _count_builds(monkeypatch, 64)
        forward()
        monkeypatch.undo()
        assert built == [20] * expected, kind


def test_flex_mask_cost_reports_every_kind_for_every_kept_length():
    result = flex_masks.flex_mask_cost(64, [16, 32], batch=2, layers=3, heads=2, head_dim=8, repeats=1)
    assert result["seq_len"] == 64 and result["layers"] == 3 and [row["keep"] for row in result["rows"]] == [16, 32]
    for row in result["rows"]:
        assert all(row[f"{kind}_ms"] > 0 for kind in (*flex_masks.KINDS, "padded_vmap"))
    table = flex_masks.flex_mask_table(result)
    assert table.count("\n| 16 |") == 1 and table.count("\n| 32 |") == 1
