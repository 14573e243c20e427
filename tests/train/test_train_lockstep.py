"""Arms stepped in lockstep (one step of each per round, in a shuffled order) compute bitwise what
they compute one after the other, and the report's wall-clock saving is then the paired estimate."""
import json

import pytest

from random_ltd.train import run_training
from random_ltd.train.rundir import arm_dir

ARMS = ("baseline", "random_ltd")


def records(root, arm, seed=0):
    """The arm's metrics lines without their clock."""
    lines = (arm_dir(root, arm, seed) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "wall_clock_s"} for line in lines]


@pytest.mark.parametrize("changes", [dict(dropout=0.1), dict(dropout=0.1, budget_ratio=1.0, seeds=2)])
def test_lockstep_and_sequential_give_bitwise_the_same_metrics(tiny, tmp_path, changes):
    """Dropout and random-LTD's draws both consume torch's default stream: arms sharing it in
    lockstep would change each other's masks. With ``budget_ratio`` the arms have different lengths."""
    run_training(tiny(out=str(tmp_path / "lockstep"), arm_order="lockstep", **changes))
    run_training(tiny(out=str(tmp_path / "sequential"), arm_order="sequential", **changes))
    for seed in range(changes.get("seeds", 1)):
        for arm in ARMS:
            assert records(tmp_path / "lockstep", arm, seed) == records(tmp_path / "sequential", arm, seed)


@pytest.mark.parametrize("order", ["lockstep", "sequential"])
def test_lockstep_takes_one_step_of_each_arm_per_round_in_a_shuffled_order(tiny, order):
    seen = []
    run_training(tiny(arm_order=order, steps=12, eval_every=12),
                 on_step=lambda arm, seed, step: seen.append((arm, step)))
    if order == "sequential":
        assert seen == [("baseline", step) for step in range(1, 13)] + [("random_ltd", step) for step in range(1, 13)]
        return
    rounds = [seen[i:i + 2] for i in range(0, len(seen), 2)]
    assert [sorted(r) for r in rounds] == [[("baseline", step), ("random_ltd", step)] for step in range(1, 13)]
    firsts = {r[0][0] for r in rounds}
    assert firsts == set(ARMS)  # the order changes from round to round


def test_lockstep_report_gives_the_paired_saving_with_its_interval(tiny, tmp_path):
    summary = run_training(tiny(arm_order="lockstep", steps=8, eval_every=8))
    comparison = summary["comparison"]
    low, high = comparison["wall_clock_s_saving_interval"]
    assert low <= comparison["wall_clock_s_saving"] <= high and comparison["wall_clock_rounds"] == 8
    assert summary["arm_order"] == "lockstep" and "wall_clock_s_saving_summed" in comparison
    report = (tmp_path / "run" / "report.md").read_text()
    assert "arms stepped in lockstep, paired over 8 rounds: 95% interval" in report
    assert all("step_s" not in run for arm in summary["arms"].values() for run in arm["seeds"])
    result = json.loads((arm_dir(tmp_path / "run", "random_ltd", 0) / "result.json").read_text())
    assert len(result["step_s"]) == 8 and sum(result["step_s"]) == pytest.approx(result["wall_clock_s"], abs=1e-3)


def test_sequential_report_says_its_wall_clock_depends_on_the_load(tiny, tmp_path):
    summary = run_training(tiny(arm_order="sequential", steps=2, eval_every=2))
    assert summary["arm_order"] == "sequential" and "wall_clock_s_saving_interval" not in summary["comparison"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "arms run one after the other: this figure depends on the machine's load" in report


def test_tiny_arms_run_in_lockstep_by_default(tiny):
    assert run_training(tiny(steps=2, eval_every=2))["arm_order"] == "lockstep"
