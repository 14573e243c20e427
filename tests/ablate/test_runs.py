"""Arms train once and are reused; an arm stopped before its first checkpoint starts anew."""
from __future__ import annotations

import json

import pytest

from random_ltd.ablate import runs
from random_ltd.ablate.runs import Arm
from random_ltd.train.rundir import arm_dir

TINY = dict(task="gpt", quick=True, layers=3, seq_len=16, batch_size=2, steps=2, vocab_size=256, corpus_mb=0.05,
            eval_every=1, eval_batches=1, kept_start=8, kept_increment=8, full_at=0.5)


def test_baseline_key_ignores_random_ltd_settings():
    plain = Arm.make("a", "baseline", TINY)
    other = Arm.make("b", "baseline", {**TINY, "drop_layers": "0", "kept_start": 4})
    assert plain.key(2, 0) == other.key(2, 0)
    changed = Arm.make("d", "random_ltd", {**TINY, "kept_start": 4})
    assert Arm.make("c", "random_ltd", TINY).key(2, 0) != changed.key(2, 0)


def test_each_arm_keeps_only_the_settings_it_reads():
    mod_only = {"mod_capacity": 0.25, "mod_aux_coef": 0.1}
    settings = {**TINY, **mod_only, "drop_layers": "1"}
    assert Arm.make("a", "baseline", settings).key(2, 0) == Arm.make("b", "baseline", TINY).key(2, 0)
    dropping = Arm.make("d", "random_ltd", {**TINY, "drop_layers": "1"})
    assert Arm.make("c", "random_ltd", settings).key(2, 0) == dropping.key(2, 0)
    routed = dict(Arm.make("e", "mod", settings).settings)
    assert routed["mod_capacity"] == 0.25 and routed["drop_layers"] == "1"
    assert "kept_start" not in routed and "full_at" not in routed  # MSLG settings leave a MoD arm's key
    assert Arm.make("f", "mod", settings).key(2, 0) != Arm.make("g", "mod", {**settings, "mod_capacity": 0.5}).key(2, 0)


def test_rejects_unknown_arm_or_method():
    with pytest.raises(ValueError):
        Arm.make("x", "both", TINY)
    with pytest.raises(ValueError):
        Arm.make("x", "random_ltd", TINY, method="magic")
    with pytest.raises(ValueError):
        Arm.make("x", "baseline", TINY, method="tokenbypass")
    with pytest.raises(ValueError):
        Arm.make("x", "random_ltd", TINY).for_engine("loop")


def test_trained_once_then_reused(tmp_path, monkeypatch):
    arm = Arm.make("ltd", "random_ltd", TINY)
    first = runs.train(arm, tmp_path, seeds=1, device="cpu")
    assert first[0]["steps"] == 2 and [point[0] for point in first[0]["curve"]] == [0, 1, 2]

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(runs, "run_training", refuse)
    monkeypatch.setattr(runs, "train_arm", refuse)
    assert runs.train(arm, tmp_path, seeds=1, device="cpu") == first


def test_bare_arm_reused_per_seed(tmp_path, monkeypatch):
    arm = Arm.make("tb", "random_ltd", TINY, method="tokenbypass").for_engine("bare")
    first = runs.train(arm, tmp_path, seeds=1, device="cpu")
    stored = json.loads((arm_dir(arm.folder(tmp_path, 1, 0), "random_ltd", 0) / "result.json").read_text())
    assert stored["final_val_loss"] == first[0]["final_val_loss"] and runs.is_trained(arm, tmp_path, 1)
    monkeypatch.setattr("random_ltd.train.program.train_step", lambda *a, **k: pytest.fail("trained again"))
    assert runs.train(arm, tmp_path, seeds=1, device="cpu") == first


def test_folder_without_checkpoint_starts_anew(tmp_path):
    arm = Arm.make("base", "baseline", TINY)
    folder = arm.folder(tmp_path, 1, 0)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # a run killed before its first checkpoint
    results = runs.train(arm, tmp_path, seeds=1, device="cpu")
    assert results[0]["steps"] == 2


def test_tokenbypass_arm_records_its_steps_cpu_time_and_load(tmp_path):
    arm = Arm.make("tb", "random_ltd", TINY, method="tokenbypass")
    (result,) = runs.train(arm, tmp_path, seeds=1, device="cpu")
    assert 0 < result["cpu_s"] and "cpu_scope" not in result
    assert len(result["load_average"]) == 2


def test_program_arm_records_its_steps_cpu_time(tmp_path):
    (result,) = runs.train(Arm.make("base", "baseline", TINY), tmp_path, seeds=1, device="cpu")
    assert 0 < result["cpu_s"] and "cpu_scope" not in result


def test_fewer_seeds_are_taken_from_a_run_with_more(tmp_path, monkeypatch):
    arm = Arm.make("base", "baseline", TINY)
    both = runs.train(arm, tmp_path, seeds=2, device="cpu")
    assert runs.covering_count(arm, tmp_path, 1, 0, (1, 2)) == 2
    assert runs.covering_count(arm, tmp_path, 1, 0, (1,)) is None
    monkeypatch.setattr(runs, "run_training", lambda *a, **k: pytest.fail("trained again"))
    assert runs.train(arm, tmp_path, seeds=1, device="cpu", counts=(1, 2)) == both[:1]


def test_tread_arm_keeps_its_span_and_lr_clock_only():
    plain = Arm.make("t", "tread", TINY)
    assert "kept_start" not in dict(plain.settings) and "full_at" not in dict(plain.settings)
    assert Arm.make("u", "tread", {**TINY, "kept_start": 4}).key(2, 0) == plain.key(2, 0)
    assert Arm.make("v", "tread", {**TINY, "drop_layers": "1:2"}).key(2, 0) != plain.key(2, 0)
    assert plain.key(2, 0) != Arm.make("b", "baseline", TINY).key(2, 0)
    with pytest.raises(ValueError):
        Arm.make("x", "tread", TINY, method="tokenbypass")
