"""The forest plot's scale: each claim in units of its tolerance, "A better" always to the left."""
from __future__ import annotations

import math

import pytest

from random_ltd.ablate import plots


def item(difference: float, half_width: float, higher_is_better: bool = False, verdict: str = "reproduced") -> dict:
    return {"section": "4", "claim": "c", "difference": difference, "half_width": half_width, "tolerance": 0.02,
            "higher_is_better": higher_is_better, "verdict": verdict}


def test_scaled_in_tolerance_units_and_oriented():
    assert plots.scaled(item(-0.04, 0.01)) == pytest.approx((-2.0, 0.5))
    # higher accuracy for A is A better: drawn to the left like a lower loss
    assert plots.scaled(item(0.04, 0.01, higher_is_better=True)) == pytest.approx((-2.0, 0.5))


def test_forest_draws_every_verdict_and_one_seed_claims(tmp_path):
    rows = [("gpt", item(-0.01, 0.005)), ("vit", item(0.01, 0.02, True, "inconclusive at this scale")),
            ("lr", item(0.05, math.inf, verdict="not reproduced"))]
    path = tmp_path / "deep" / "forest.png"
    plots.forest(path, rows)
    assert path.stat().st_size > 5_000
    label = plots.row_label("x", {"section": "5", "claim": "one two three four five six seven"}, width=12)
    assert label == "5 x: one two\nthree four …"
