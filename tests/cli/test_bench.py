"""``random-ltd bench --quick``: runs, prints a table, writes JSON with the documented keys."""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from random_ltd.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
SECTIONS = ("stack", "train_step", "memory", "whole_run")


def _key_names(value, found: set[str]) -> set[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            found.add(key)
            _key_names(item, found)
    elif isinstance(value, list):
        for item in value:
            _key_names(item, found)
    return found


@pytest.fixture(scope="module")
def quick_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def quick_run(quick_folder):
    """One full --quick run (all four sections), table on stdout, JSON and a figure in files."""
    folder = quick_folder
    out = folder / "bench.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["bench", "--quick", "--out", str(out), "--plot", str(folder / "bench.png")])
    return code, stdout.getvalue(), json.loads(out.read_text())


def test_quick_run_succeeds_with_every_section(quick_run):
    code, table, result = quick_run
    assert code == 0
    for section in SECTIONS:
        assert section in result, section
    assert result["settings"]["quick"] is True
    for title in ("Layer stack", "Training step", "Peak memory", "Whole MSLG run", "Targets:"):
        assert title in table


def test_plot_flag_draws_a_png(quick_run, quick_folder, tmp_path):
    _, _, result = quick_run
    assert (quick_folder / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from random_ltd.bench import plots
    assert plots.draw(result, tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plots.draw({**{k: v for k, v in result.items() if k not in ("stack", "train_step", "whole_run")}},
                          tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_every_json_key_is_documented(quick_run):
    _, _, result = quick_run
    prose = re.sub(r"```.*?```", "", DOCS.read_text(), flags=re.S)  # fenced blocks are examples, not key docs
    spans = re.findall(r"`([^`]+)`", prose)
    documented = {word for span in spans for word in re.findall(r"[a-z_0-9]+", span)}
    missing = sorted(_key_names(result, set()) - documented)
    assert not missing, f"keys missing from docs/benchmarks.md: {missing}"


def test_figures_are_consistent(quick_run):
    _, _, result = quick_run
    for stack in result["stack"]:
        full = stack["full"]
        assert full["min_s"] <= full["median_s"] and len(full["times_s"]) == result["settings"]["repeats"]
        assert stack["drop_layers"] == list(range(1, stack["shape"]["layers"] - 1))
        for row in stack["keeps"]:
            expected = (row["ltd"]["min_s"] - row["ideal"]["min_s"]) / full["min_s"]
            assert row["overhead"] == pytest.approx(expected)
            assert 0 < row["keep"] < stack["shape"]["seq_len"]
    for row in result["train_step"]["keeps"]:
        assert 0 < row["flop_saving"] < row["layer_token_saving"] < 1  # the LM head never shrinks
    run = result["whole_run"]
    kept = [point["kept"] for point in run["schedule"]["kept"]]
    assert kept == sorted(kept) and kept[0] == run["schedule"]["start"] and kept[-1] == run["schedule"]["seq_len"]
    assert 0 < run["flop_saving"] < run["layer_token_saving"] < 1
    assert len(run["step_kept"]) == run["schedule"]["steps"] == len(run["step_times_s"]["random_ltd"])
    assert run["realised_over_flop_saving_paired"] == pytest.approx(run["realised_saving_paired"] / run["flop_saving"])
    assert result["targets"]["whole_run_ratio"] == run["realised_over_flop_saving_paired"]
    assert result["targets"]["whole_run_ratio_sum"] == run["realised_over_flop_saving"]
    for memory in result["memory"]:
        assert memory["full"]["step_peak_bytes"] > 0
        for row in memory["keeps"]:
            assert row["ltd_over_full"] == pytest.approx(
                row["ltd"]["step_peak_bytes"] / memory["full"]["step_peak_bytes"])
    assert set(result["targets"]) >= {"overhead_met", "whole_run_met", "memory_met"}
    keeps = [row for stack in result["stack"] for row in stack["keeps"]]
    assert result["targets"]["overhead_max"] == max(row["overhead_median"] for row in keeps)
    assert result["targets"]["overhead_max_minima"] == max(row["overhead"] for row in keeps)


def test_json_flag_prints_one_object(capsys):
    assert main(["bench", "--quick", "--sections", "stack", "--shapes", "quick", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "stack" in result and "train_step" not in result
    assert [stack["shape"]["name"] for stack in result["stack"]] == ["quick"]
    assert result["targets"]["whole_run_met"] is None


@pytest.mark.parametrize("argv, flag", [
    (["--sections", "stack,bogus"], "--sections"),
    (["--repeats", "0"], "--repeats"),
    (["--run-steps", "-3"], "--run-steps"),
    (["--device", "tpu"], "--device"),
    (["--shapes", "gpt2-huge"], "--shapes"),
    (["--clock", "cpu", "--threads", "2"], "--clock"),
    (["--plot", "/no/such/folder/bench.png"], "--plot"),
    (["--out", "/no/such/folder/bench.json"], "--out"),
])
def test_bad_input_is_a_one_line_error(capsys, argv, flag):
    assert main(["bench", "--quick", *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("random-ltd bench: error: " + flag) and "\n" not in error


def test_an_interrupted_run_keeps_its_finished_sections(tmp_path, monkeypatch, capsys):
    from random_ltd.bench import sections

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(sections, "train_section", interrupted)
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--sections", "train,stack", "--repeats", "1", "--out", str(out)]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    saved = json.loads(out.read_text())
    assert saved["complete"] is False
    assert "stack" in saved and "train_step" not in saved  # stack runs first whatever the order asked
    rows = [row for stack in saved["stack"] for row in stack["keeps"]]  # the targets of the saved stack section
    assert rows and saved["targets"]["overhead_max"] == max(row["overhead_median"] for row in rows)
    assert not list(tmp_path.glob("*.partial"))


def test_a_finished_run_is_marked_complete(quick_run):
    _, _, result = quick_run
    assert result["complete"] is True
