import json
import math

import pytest
from train.fakes import tiny_config

from random_ltd.train import run_training
from random_ltd.train.config import ConfigError
from random_ltd.train.rundir import arm_dir


def lines(root, arm, seed=0):
    return [json.loads(line) for line in (arm_dir(root, arm, seed) / "metrics.jsonl").read_text().splitlines()]


def without_clock(records):
    return [{k: v for k, v in r.items() if k != "wall_clock_s"} for r in records]


def test_quick_run_writes_metrics_summary_report_and_plots(tiny, tmp_path):
    config = tiny()
    summary = run_training(config, command="random-ltd train --quick")
    root = tmp_path / "run"
    for arm in ("baseline", "random_ltd"):
        records = lines(root, arm)
        assert [r["step"] for r in records] == list(range(7))
        assert {"train_loss", "lr", "kept", "layer_tokens", "tokens", "wall_clock_s"} <= set(records[1])
        assert "val_loss" in records[0] and "val_loss" in records[3] and "val_loss" in records[6]
        assert all(math.isfinite(r["train_loss"]) for r in records[1:])
    on_disk = json.loads((root / "summary.json").read_text())
    assert on_disk["arms"] == summary["arms"] and on_disk["world_size"] == 1
    assert on_disk["config"]["steps"] == 6 and on_disk["config"]["task"] == "gpt"
    for arm in ("baseline", "random_ltd"):
        result = on_disk["arms"][arm]
        assert {"layer_tokens", "flops", "wall_clock_s", "final_val_loss", "final_val_perplexity"} <= set(result)
        assert result["final_val_loss"] == lines(root, arm)[-1]["val_loss"]
    first_base, first_ltd = lines(root, "baseline")[:2], lines(root, "random_ltd")[:2]
    assert first_base[0]["val_loss"] == first_ltd[0]["val_loss"]  # same initial weights
    assert first_ltd[1]["kept"] == 8 and first_base[1]["kept"] == 32
    base, ltd = on_disk["arms"]["baseline"], on_disk["arms"]["random_ltd"]
    assert base["layer_tokens"] == 6 * 4 * 32 * 4 and ltd["layer_tokens"] < base["layer_tokens"]
    assert on_disk["comparison"]["layer_tokens_saving"] == pytest.approx(1 - ltd["layer_tokens"] / base["layer_tokens"])
    report = (root / "report.md").read_text()
    assert "random-ltd train --quick" in report and "| random_ltd | 6 |" in report
    for name in ("val_loss_vs_steps", "val_loss_vs_layer_tokens", "val_loss_vs_wall_clock", "kept_and_lr"):
        assert (root / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name}.png)" in report


def test_random_ltd_that_keeps_everything_reproduces_the_baseline_exactly(tiny, tmp_path):
    """The oracle: nothing dropped + a LayerToken LR that equals the iteration LR -> same losses."""
    run_training(tiny(kept_start=32, dropout=0.1))
    base, ltd = lines(tmp_path / "run", "baseline"), lines(tmp_path / "run", "random_ltd")
    assert without_clock(base) == without_clock(ltd)


class Killed(Exception):
    pass


RESUME_SETTINGS = dict(checkpoint_every=2, dropout=0.1)


@pytest.fixture(scope="module")
def uninterrupted(corpus_dir, cache, tmp_path_factory):
    """Both arms' metrics of a run that nobody stopped (computed once for the resume tests)."""
    root = tmp_path_factory.mktemp("whole")
    run_training(tiny_config(corpus_dir, cache, root, **RESUME_SETTINGS))
    return {arm: without_clock(lines(root, arm)) for arm in ("baseline", "random_ltd")}


@pytest.mark.parametrize("order", ["lockstep", "sequential"])
@pytest.mark.parametrize("arm, at", [("baseline", 5), ("random_ltd", 4)])
def test_resume_after_a_kill_equals_the_uninterrupted_run(tiny, tmp_path, uninterrupted, arm, at, order):
    settings = {**RESUME_SETTINGS, "arm_order": order}

    def kill(current_arm, seed, step):
        if current_arm == arm and step == at:
            raise Killed

    interrupted = tiny(out=str(tmp_path / "cut"), **settings)
    with pytest.raises(Killed):
        run_training(interrupted, on_step=kill)
    assert len(lines(tmp_path / "cut", arm)) == at + 1  # lines past the checkpoint exist before resuming
    run_training(interrupted, resume=True)
    for name in ("baseline", "random_ltd"):
        assert without_clock(lines(tmp_path / "cut", name)) == uninterrupted[name]


def test_seeds_give_mean_and_std(tiny, tmp_path):
    summary = run_training(tiny(seeds=2, steps=3, eval_every=3, arms=("random_ltd",)))
    arm = summary["arms"]["random_ltd"]
    losses = [run["final_val_loss"] for run in arm["seeds"]]
    assert len(losses) == 2 and losses[0] != losses[1]
    assert arm["final_val_loss"] == pytest.approx(sum(losses) / 2)
    assert arm["final_val_loss_std"] == pytest.approx(abs(losses[0] - losses[1]) / math.sqrt(2))
    assert "±" in (tmp_path / "run" / "report.md").read_text()


def test_bert_quick_run_reports_perplexity(tiny, tmp_path):
    summary = run_training(tiny(task="bert", steps=3, eval_every=3))
    ltd = summary["arms"]["random_ltd"]
    assert ltd["final_val_loss"] == lines(tmp_path / "run", "random_ltd")[-1]["val_loss"]
    assert ltd["final_val_perplexity"] == pytest.approx(math.exp(ltd["final_val_loss"]))


def test_vit_quick_run_reports_accuracy(tiny, fashion_dir, tmp_path):
    summary = run_training(tiny(task="vit", data=(), vocab_size=None, seq_len=None, steps=3, eval_every=3,
                                kept_start=None, kept_increment=None, fashion_mnist_dir=str(fashion_dir)))
    accuracy = {arm: summary["arms"][arm]["final_val_accuracy"] for arm in ("baseline", "random_ltd")}
    for arm, value in accuracy.items():
        assert value == lines(tmp_path / "run", arm)[-1]["val_accuracy"] and 0 <= value <= 1
    assert summary["comparison"]["val_accuracy_difference"] == accuracy["random_ltd"] - accuracy["baseline"]


def test_budget_ratio_changes_the_random_ltd_steps(tiny):
    summary = run_training(tiny(budget_ratio=1.0, steps=4, eval_every=2))
    base, ltd = summary["arms"]["baseline"], summary["arms"]["random_ltd"]
    assert ltd["steps"] > base["steps"] and ltd["layer_tokens"] >= base["layer_tokens"]


def test_a_folder_with_a_run_is_not_overwritten_and_resume_checks_it(tiny, tmp_path):
    config = tiny(steps=2, eval_every=2)
    run_training(config)
    with pytest.raises(ConfigError, match="--out: .* already holds a run"):
        run_training(config)
    with pytest.raises(ConfigError, match="--resume: .* different configuration: lr=0.5"):
        run_training(config.replace(lr=0.5), resume=True)
    with pytest.raises(ConfigError, match="--resume: .* holds no run"):
        run_training(config.replace(out=str(tmp_path / "empty")), resume=True)
    summary = run_training(config, resume=True)  # finished: reads the results back
    assert summary["arms"]["baseline"]["steps"] == 2
