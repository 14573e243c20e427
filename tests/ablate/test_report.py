"""Claims on a higher-is-better metric, and the times the arms table shows."""
from __future__ import annotations

import pytest

from random_ltd.ablate import report
from random_ltd.ablate.studies import Claim
from random_ltd.ablate.verdict import NOT_REPRODUCED, REPRODUCED


def result(seed: int, loss: float, accuracy: float | None = None, cpu: float = 10.0, flops: int = 1000) -> dict:
    entry = {"seed": seed, "steps": 5, "layer_tokens": 100, "flops": flops, "wall_clock_s": 99.0, "cpu_s": cpu,
             "final_val_loss": loss, "curve": [[0, 0, loss + 1, 0], [5, 100, loss, flops]],
             "load_average": [1.5, 2.5]}
    if accuracy is not None:
        entry["final_val_accuracy"] = accuracy
    return entry


def arms_with_accuracy(a_accuracy: list[float], b_accuracy: list[float]) -> dict:
    return report.summarize_arms({
        "A": [result(seed, 1.0, value) for seed, value in enumerate(a_accuracy)],
        "B": [result(seed, 1.0, value) for seed, value in enumerate(b_accuracy)],
    })


ACCURACY_CLAIM = Claim("4", "A is as accurate as B", "no_worse", ("A",), ("B",), metric="final_val_accuracy",
                       higher_is_better=True)


def test_higher_accuracy_is_no_worse():
    arms = arms_with_accuracy([0.90, 0.91, 0.92, 0.90], [0.80, 0.81, 0.80, 0.82])
    judged = report.judge_claim(ACCURACY_CLAIM, arms)
    assert judged["verdict"] == REPRODUCED and judged["difference"] > 0 and judged["higher_is_better"]
    assert judged["tolerance"] == pytest.approx(0.01 * 0.8075)  # 1% of B's accuracy, not of its loss
    # read as lower-is-better, the same numbers would say A is far worse
    lower = Claim("4", "x", "no_worse", ("A",), ("B",), metric="final_val_accuracy")
    assert report.judge_claim(lower, arms)["verdict"] == NOT_REPRODUCED


def test_lower_accuracy_is_not_reproduced():
    arms = arms_with_accuracy([0.70, 0.71, 0.70, 0.72], [0.80, 0.81, 0.80, 0.82])
    assert report.judge_claim(ACCURACY_CLAIM, arms)["verdict"] == NOT_REPRODUCED


def test_text_task_arms_have_no_accuracy_column():
    arms = report.summarize_arms({"baseline": [result(0, 1.0), result(1, 1.1)]})
    assert "final_val_accuracy" not in arms["baseline"]
    assert "accuracy" not in report.arms_table(arms)


def test_table_shows_cpu_time_and_its_ratio_not_wall_clock():
    arms = report.summarize_arms({
        "baseline": [result(0, 1.0, cpu=10.0), result(1, 1.0, cpu=12.0)],
        "random-LTD": [result(0, 1.0, cpu=7.0), result(1, 1.0, cpu=8.4)],
        "TokenBypass": [result(0, 1.0, cpu=30.0), result(1, 1.0, cpu=30.0)],
    })
    table = report.arms_table(arms)
    header, _, baseline, ltd, bypass = table.splitlines()
    assert "CPU s/seed" in header and "wall" not in header and "99.0" not in table
    assert baseline.endswith("| 11.0 | 1.00 |") and ltd.endswith("| 7.7 | 0.70 |")
    assert bypass.endswith("| 30.0 | 2.73 |")
    assert arms["baseline"]["load_average"] == [1.5, 2.5]


def test_flop_matched_study_shows_training_flops_and_plots_against_them(tmp_path, monkeypatch):
    arms = report.summarize_arms({
        "baseline": [result(0, 1.0, flops=1000), result(1, 1.0, flops=1000)],
        "MoD": [result(0, 0.9, flops=990), result(1, 0.9, flops=994)],
    })
    assert arms["MoD"]["curve_mean"][-1] == [5, 100, 0.9, 992]
    assert "FLOPs" not in report.arms_table(arms)
    header, _, baseline, routed = report.arms_table(arms, flops=True).splitlines()
    assert "| training FLOPs | FLOPs vs baseline |" in header
    assert "| 1000 | 1.000 |" in baseline and "| 992 | 0.992 |" in routed

    from random_ltd.ablate import STUDIES

    drawn = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, x, *a, **k: drawn.append(list(x)) or
                        original(self, x, *a, **k))
    report.plot(tmp_path / "mod.png", STUDIES["mod"], arms)
    report.plot(tmp_path / "gpt.png", STUDIES["gpt"], arms)
    assert drawn == [[0, 1000], [0, 992], [0, 100], [0, 100]]  # x: FLOPs for mod, layer-tokens for gpt
