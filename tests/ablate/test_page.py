"""The results page keeps other studies' blocks, lists unrun studies, and reads its own data back."""
from __future__ import annotations

from random_ltd.ablate import STUDIES, page


def judged(verdict: str) -> dict:
    return {"section": "5.4", "claim": "MSLG beats constant", "difference": -0.1, "half_width": 0.02,
            "verdict": verdict, "note": ""}


def test_update_replaces_one_block_and_keeps_the_others(tmp_path):
    path = tmp_path / "results.md"
    page.update(path, "schedule", "## schedule v1\ntable one", {"judged": [judged("reproduced")]})
    page.update(path, "layers", "## layers\ntable two", {"judged": [judged("not reproduced")]})
    page.update(path, "schedule", "## schedule v2\ntable three", {"judged": [judged("inconclusive at this scale")]})
    text = path.read_text()
    assert "table two" in text and "table three" in text and "table one" not in text
    assert text.index("## layers") < text.index("## schedule v2")  # paper order, not run order
    blocks = page.read_blocks(path)
    assert page.block_data(blocks["schedule"])["judged"][0]["verdict"] == "inconclusive at this scale"
    summary = text[text.index("## Summary"):text.index('<a id="layers">')]
    assert "**not reproduced**" in summary and "**inconclusive at this scale**" in summary
    unrun = [name for name in STUDIES if name not in ("schedule", "layers")]
    assert all(f"`{name}` |" in summary for name in unrun) and summary.count("not run yet") == len(unrun)


def test_render_is_a_fixed_point(tmp_path):
    path = tmp_path / "results.md"
    page.update(path, "lr", "## lr\nbody", {"judged": [judged("reproduced")]})
    first = path.read_text()
    path.write_text(page.render(page.read_blocks(path)))
    assert path.read_text() == first
