"""The parallel planner trains each arm once, with the most seeds any chosen study asks of it."""
from __future__ import annotations

from random_ltd.ablate import STUDIES, Options
from random_ltd.ablate.parallel import pending_arms


def test_an_arm_shared_at_two_seed_counts_is_trained_once_with_the_larger(tmp_path):
    options = Options(root=tmp_path, results=tmp_path / "results.md")
    assert STUDIES["gpt"].seeds < STUDIES["lr"].seeds
    pending = pending_arms(["gpt", "lr"], options)
    baselines = [seeds for arm, seeds in pending if arm.label == "baseline"]
    assert baselines == [STUDIES["lr"].seeds]
    assert len(pending) == 4  # baseline, gpt's random-LTD, lr's two random-LTD arms


def test_seeds_flag_overrides_every_study(tmp_path):
    options = Options(root=tmp_path, results=tmp_path / "results.md", seeds=3)
    assert {seeds for _, seeds in pending_arms(["gpt", "lr"], options)} == {3}
    assert options.command("gpt") == "random-ltd ablate gpt --seeds 3"
    assert Options(root=tmp_path, results=tmp_path / "r.md").command("gpt") == "random-ltd ablate gpt"
