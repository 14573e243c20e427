"""The results page keeps other studies' blocks, lists unrun studies, reads its own data back,
draws the forest plot and says whether a verdict changes with model size."""
from __future__ import annotations

from random_ltd.ablate import STUDIES, page


def judged(verdict: str, claim: str = "MSLG beats constant", difference: float = -0.1) -> dict:
    return {"section": "5.4", "claim": claim, "difference": difference, "half_width": 0.02, "tolerance": 0.05,
            "seeds": 10, "verdict": verdict, "note": ""}


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
    summary = text[text.index("## Summary"):text.index("## Does a verdict change")]
    assert "**not reproduced**" in summary and "**inconclusive at this scale**" in summary
    unrun = [name for name in STUDIES if name not in ("schedule", "layers")]
    assert all(f"`{name}` |" in summary for name in unrun) and summary.count("not run yet") == len(unrun)


def test_render_is_a_fixed_point(tmp_path):
    path = tmp_path / "results.md"
    page.update(path, "lr", "## lr\nbody", {"judged": [judged("reproduced")]})
    first = path.read_text()
    path.write_text(page.render(page.read_blocks(path)))
    assert path.read_text() == first


def test_forest_plot_beside_the_page(tmp_path):
    path = tmp_path / "results.md"
    page.update(path, "lr", "## lr\nbody", {"judged": [judged("reproduced"), judged("inconclusive at this scale")]})
    assert (tmp_path / "results" / "forest.png").stat().st_size > 5_000
    text = path.read_text()
    assert text.index("(results/forest.png)") < text.index("| § | study |")  # at the top, before the summary


def test_scale_table_says_whether_a_verdict_changes(tmp_path):
    path = tmp_path / "results.md"
    page.update(path, "lr", "## lr", {"judged": [judged("inconclusive at this scale", "claim one"),
                                                 judged("reproduced", "claim two")]})
    page.update(path, "lr-small", "## lr small", {"judged": [judged("reproduced", "claim one", -0.3),
                                                             judged("reproduced", "claim two")]})
    text = path.read_text()
    scale = text[text.index("## Does a verdict change"):text.index('<a id="lr">')]
    rows = [line for line in scale.splitlines() if line.startswith("| claim ") and "tiny:" not in line]
    assert rows[0].endswith("| **yes** |") and "-0.3000 ± 0.0200" in rows[0] and rows[1].endswith("| no |")
    assert "`budget` vs `budget-small` | — | not run yet" in scale


def test_summary_counts_the_verdicts(tmp_path):
    path = tmp_path / "results.md"
    page.update(path, "lr", "## lr", {"judged": [judged("reproduced"), judged("reproduced", "claim two")]})
    page.update(path, "layers", "## layers", {"judged": [judged("not reproduced"),
                                                         judged("inconclusive at this scale", "claim two")]})
    text = path.read_text()
    summary = text[text.index("## Summary"):text.index("| § | study |")]
    unrun = len(STUDIES) - 2
    assert (f"4 claims judged: 2 reproduced, 1 not reproduced, 1 inconclusive at this scale; "
            f"{unrun} studies still to run.") in summary


def test_scale_section_says_in_words_whether_any_verdict_changes(tmp_path):
    path = tmp_path / "results.md"
    for name in ("lr", "lr-small", "budget", "budget-small"):
        page.update(path, name, f"## {name}", {"judged": [judged("reproduced", f"{name} claim")]})
    text = path.read_text()
    assert "No verdict changes with model size (2 claims judged at both sizes)." in text
    page.update(path, "budget-small", "## budget-small", {"judged": [judged("not reproduced", "budget claim")]})
    text = path.read_text()
    assert "1 of 2 verdicts changes with model size: budget claim." in text
