"""``random-ltd ablate``: every study's --quick version end to end, reruns, and bad input."""
from __future__ import annotations

import json

import pytest
import torch

from random_ltd.ablate import STUDIES
from random_ltd.ablate.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from random_ltd.cli import main

VERDICTS = {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Every study, --quick. One thread: tiny models gain nothing from more, and lose a lot when
    the CI machine's cores are busy with other jobs."""
    root = tmp_path_factory.mktemp("ablate")
    threads = torch.get_num_threads()
    try:
        assert main(["ablate", "all", "--quick", "--out", str(root), "--device", "cpu", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_study_writes_its_folder(quick_run, name):
    folder = quick_run / name
    assert (folder / "plot.png").stat().st_size > 10_000
    results = json.loads((folder / "results.json").read_text())
    arms, claims = STUDIES[name].build(True)
    assert list(results["arms"]) == [arm.label for arm in arms]
    assert all(arm["seeds"] == [0, 1] and len(arm["final_val_loss"]) == 2 for arm in results["arms"].values())
    assert [item["claim"] for item in results["judged"]] == [claim.text for claim in claims]
    assert {item["verdict"] for item in results["judged"]} <= VERDICTS
    table = (folder / "table.md").read_text()
    assert f"random-ltd ablate {name} --quick" in table and "±" in table


def test_results_page_has_every_study(quick_run):
    text = (quick_run / "results.md").read_text()
    assert "not run yet" not in text
    for name in STUDIES:
        assert f"<!-- study: {name} -->" in text and (quick_run / "results" / f"{name}.png").exists()
    summary = text[text.index("## Summary"):text.index("## Does a verdict change")]
    claims = sum(len(study.build(True)[1]) for study in STUDIES.values())
    assert sum(summary.count(f"**{verdict}**") for verdict in VERDICTS) == claims
    assert (quick_run / "results" / "forest.png").stat().st_size > 10_000
    scale = text[text.index("## Does a verdict change"):text.index("<!-- study:")]
    small_claims = sum(len(STUDIES[name].build(True)[1]) for name in ("lr-small", "budget-small"))
    assert sum(scale.count(f"| {answer} |") for answer in ("no", "**yes**")) == small_claims


def test_tables_show_cpu_time_not_wall_clock(quick_run):
    table = (quick_run / "schedule" / "table.md").read_text()
    assert "CPU s/seed" in table and "wall-clock (s)" not in table
    arms = json.loads((quick_run / "vit" / "results.json").read_text())["arms"]
    assert all(len(arm["final_val_accuracy"]) == 2 and len(arm["cpu_s"]) == 2 for arm in arms.values())


def test_rerun_reuses_the_trained_arms(quick_run, monkeypatch, capsys):
    from random_ltd.ablate import runs

    monkeypatch.setattr(runs, "run_training", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr("random_ltd.train.program.train_step", lambda *a, **k: pytest.fail("trained again"))
    before = json.loads((quick_run / "lr" / "results.json").read_text())["judged"]
    assert main(["ablate", "lr", "--quick", "--out", str(quick_run), "--device", "cpu"]) == 0
    assert json.loads((quick_run / "lr" / "results.json").read_text())["judged"] == before
    assert "lr: " in capsys.readouterr().out


def test_parallel_jobs_give_the_same_numbers(quick_run, tmp_path):
    assert main(["ablate", "schedule", "--quick", "--out", str(tmp_path), "--device", "cpu", "--jobs", "2"]) == 0
    parallel = json.loads((tmp_path / "schedule" / "results.json").read_text())
    sequential = json.loads((quick_run / "schedule" / "results.json").read_text())
    for label, arm in sequential["arms"].items():
        assert parallel["arms"][label]["final_val_loss"] == arm["final_val_loss"], label
    assert parallel["judged"] == sequential["judged"]


def test_mod_arms_count_the_flops_they_were_matched_on(quick_run):
    """Each arm's FLOPs, counted step by step in training, are the closed-form sum the study matched
    its step counts on; the table shows them."""
    from random_ltd.ablate.studies import training_flops

    trained = json.loads((quick_run / "mod" / "results.json").read_text())["arms"]
    for arm in STUDIES["mod"].build(True)[0]:
        assert trained[arm.label]["flops"] == [training_flops(arm)] * 2, arm.label
    assert "| training FLOPs | FLOPs vs baseline |" in (quick_run / "mod" / "table.md").read_text()


def test_list_trains_nothing(capsys, tmp_path):
    assert main(["ablate", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in STUDIES)


def test_help_lists_every_study():
    from random_ltd.cli.ablate import EPILOG

    listed = [line.split()[0] for line in EPILOG.split("studies:")[1].split("\n\n")[0].splitlines() if line.strip()]
    assert listed == [*STUDIES, "all"]


@pytest.mark.parametrize("argv, flag", [
    (["ablate"], "NAME"),
    (["ablate", "nonsense"], "NAME"),
    (["ablate", "lr", "--seeds", "0"], "--seeds"),
    (["ablate", "lr", "--seed", "-1"], "--seed"),
    (["ablate", "lr", "--threads", "0"], "--threads"),
    (["ablate", "lr", "--jobs", "0"], "--jobs"),
])
def test_bad_input_is_one_line_and_exit_2(argv, flag, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and f"error: {flag}" in error
    assert not any(tmp_path.iterdir())
