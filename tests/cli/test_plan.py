"""``random-ltd plan``: output against the library and brute force, --json, --plot, every bad input."""
from __future__ import annotations

import json
import math
import re

import pytest

from random_ltd.accounting import layer_tokens_per_step
from random_ltd.cli import main
from random_ltd.planner import Training, build_mod_plan, build_plan
from random_ltd.schedules import MSLG, ConstantKeep

SMALL = ["--seq-len", "128", "--layers", "6", "--batch-size", "4", "--total-steps", "500"]
PAPER_GPT = ["--seq-len", "2048", "--layers", "24", "--start", "128", "--increment", "16", "--every-tokens", "1.75B",
             "--total-tokens", "300B", "--batch-size", "256"]


def invoke(capsys, *argv):
    try:
        code = main(["plan", *argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def brute_force_layer_tokens(kept_at, seq_len, batch, layers, drop, steps):
    return sum(layer_tokens_per_step(seq_len, batch, layers, drop, kept_at(t)) for t in range(steps))


def test_paper_gpt_human_output_matches_the_library(capsys):
    code, out, err = invoke(capsys, *PAPER_GPT)
    assert code == 0 and not err
    plan = build_plan(MSLG(2048, 128, 16, every_tokens=1.75e9), Training(2048, 24, 256, total_tokens=300e9))
    assert f"LayerToken saving  {plan.layer_token_saving:.1%}" in out
    assert f"FLOP saving        {plan.flop_saving:.1%}" in out
    rows = [line.split() for line in out.splitlines() if re.fullmatch(r"\s+[\d,]+\s+\S+\s+[\d.]+%\s+\d+", line)]
    assert 2 < len(rows) <= 12 and rows[0][-1] == "128" and rows[-1][-1] == "2048"
    assert int(rows[-1][0].replace(",", "")) == plan.full_length_step


def test_json_equals_brute_force(capsys):
    code, out, _ = invoke(capsys, *SMALL, "--start", "16", "--every-steps", "50", "--json")
    data = json.loads(out)
    schedule = MSLG(128, 16, 16, every_steps=50)
    assert code == 0 and data["drop_layers"] == [1, 2, 3, 4]
    assert data["random_ltd_layer_tokens"] == brute_force_layer_tokens(schedule, 128, 4, 6, [1, 2, 3, 4], 500)
    assert data["baseline_layer_tokens"] == 500 * 4 * 128 * 6
    saving = 1 - data["random_ltd_layer_tokens"] / data["baseline_layer_tokens"]
    assert data["layer_token_saving"] == pytest.approx(saving)
    assert data["schedule"] == [{"step": 50 * i, "kept": 16 + 16 * i} for i in range(8)]
    assert 0 < data["layer_token_saving"] < data["flop_saving"] < 1


def test_custom_drop_layers_and_constant_keep(capsys):
    _, out, _ = invoke(capsys, *SMALL, "--keep", "32", "--drop-layers", "2,3", "--json")
    data = json.loads(out)
    assert data["drop_layers"] == [2, 3] and data["schedule"] == [{"step": 0, "kept": 32}]
    assert data["layer_token_saving"] == pytest.approx(2 / 6 * (1 - 32 / 128))


@pytest.mark.parametrize("extra", [["--start", "16"], ["--full-at", "0.8"], []])
def test_target_saving(capsys, extra):
    code, out, _ = invoke(capsys, *SMALL, "--target-saving", "0.2", *extra, "--json")
    data = json.loads(out)
    assert code == 0 and data["target_saving"] == 0.2 and data["layer_token_saving"] >= 0.2
    assert data["layer_token_saving"] < 0.22  # the smallest schedule change that reaches it, not far above
    assert data["schedule"][-1]["kept"] == 128


def test_full_at_fraction_and_token_suffixes(capsys):
    _, out, _ = invoke(capsys, "--seq-len", "197", "--layers", "12", "--start", "66", "--full-at", "0.8",
                       "--total-tokens", "1.97M", "--batch-size", "100", "--json")
    data = json.loads(out)
    assert data["total_steps"] == 100 and data["full_length_step"] == 80
    assert data["schedule"][-1] == {"step": 80, "kept": 197}


def test_deepspeed_config_matches_a_replay(capsys, tmp_path):
    config = {"train_batch_size": 8, "data_efficiency": {"data_routing": {"random_ltd": {
        "total_layer_num": 6, "random_ltd_layer_num": 3, "random_ltd_layer_id": [1, 2, 3],
        "random_ltd_schedule": {"min_value": 32, "max_value": 256, "schedule_type": "fixed_linear",
                                "schedule_config": {"require_steps": 300, "seq_per_step": 16}}}}}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    code, out, err = invoke(capsys, "--deepspeed-config", str(path), "--total-steps", "400", "--json")
    data = json.loads(out)

    def replay(step):  # DeepSpeed's documented fixed_linear formula
        value = math.floor(step / 300 * (256 - 32) + 32)
        return min(value - value % 16, 256)

    assert code == 0 and not err and data["drop_layers"] == [1, 2, 3] and data["batch_size"] == 8
    assert data["random_ltd_layer_tokens"] == brute_force_layer_tokens(replay, 256, 8, 6, [1, 2, 3], 400)
    assert data["full_length_step"] == 300


def test_deepspeed_defect_is_a_warning_line(capsys, tmp_path):
    config = {"random_ltd_layer_num": 1, "random_ltd_layer_id": [1], "total_layer_num": 3,
              "random_ltd_schedule": {"min_value": 40, "max_value": 128, "schedule_type": "fixed_linear",
                                      "schedule_config": {"require_steps": 100, "seq_per_step": 16}}}
    path = tmp_path / "section.json"
    path.write_text(json.dumps(config))
    code, out, err = invoke(capsys, "--deepspeed-config", str(path), "--total-steps", "200", "--batch-size", "2")
    assert code == 0 and "LayerToken saving" in out
    assert err.count("\n") == 1 and err.startswith("random-ltd plan: warning: DeepSpeed starts at 32")


def test_plot_writes_a_png(capsys, tmp_path):
    target = tmp_path / "plan.png"
    code, out, _ = invoke(capsys, *SMALL, "--start", "16", "--full-at", "0.6", "--plot", str(target),
                          "--warmup-fraction", "0.05")
    assert code == 0 and str(target) in out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 10_000


def test_help_documents_flags_and_json_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for text in ("--seq-len", "--layers", "--drop-layers", "--start", "--increment", "--every-steps", "--every-tokens",
                 "--full-at", "--total-steps", "--total-tokens", "--batch-size", "--deepspeed-config",
                 "--target-saving", "--plot", "--json", "layer_token_saving", "flop_saving", "baseline_layer_tokens",
                 "random_ltd_layer_tokens", "drop_layers", '"step"', '"kept"', "--mod-capacity", "method",
                 "mod_capacity", "routed_length", "mod_layer_tokens", "mod_flops", "Mixture-of-Depths"):
        assert text in out, text


GROWTH = ["--start", "16", "--every-steps", "10"]


@pytest.mark.parametrize("argv,flag", [
    ([*SMALL, "--start", "200", "--every-steps", "10"], "--start"),
    ([*SMALL, "--start", "0", "--every-steps", "10"], "--start"),
    ([*SMALL, "--start", "16", "--increment", "0", "--every-steps", "10"], "--increment"),
    ([*SMALL, "--start", "16", "--increment", "-16", "--every-steps", "10"], "--increment"),
    ([*SMALL, "--start", "16", "--every-steps", "0"], "--every-steps"),
    ([*SMALL, "--start", "16", "--every-steps", "-3"], "--every-steps"),
    ([*SMALL, "--start", "16", "--every-tokens", "0"], "--every-tokens"),
    ([*SMALL, "--start", "16", "--full-at", "0"], "--full-at"),
    ([*SMALL, "--start", "16", "--full-at", "501"], "--full-at"),
    ([*SMALL, "--start", "16", "--every-steps", "100"], "--total-steps"),
    (["--seq-len", "128", "--layers", "6", "--batch-size", "4", "--total-tokens", "10K", *GROWTH], "--total-tokens"),
    ([*SMALL, "--start", "16", "--every-steps", "10", "--every-tokens", "5"], "--every-tokens"),
    ([*SMALL, "--start", "16", "--every-steps", "10", "--full-at", "0.5"], "--full-at"),
    ([*SMALL, "--start", "16"], "--every-steps"),
    ([*SMALL, "--every-steps", "10"], "--start"),
    ([*SMALL, "--total-tokens", "5B", *GROWTH], "--total-tokens"),
    (["--seq-len", "128", "--layers", "6", "--batch-size", "4", *GROWTH], "--total-steps"),
    (["--layers", "6", "--batch-size", "4", "--total-steps", "9", *GROWTH], "--seq-len"),
    (["--seq-len", "128", "--batch-size", "4", "--total-steps", "9", *GROWTH], "--layers"),
    (["--seq-len", "128", "--layers", "6", "--total-steps", "500", *GROWTH], "--batch-size"),
    (["--seq-len", "x", *GROWTH], "--seq-len"),
    ([*SMALL, "--start", "16", "--every-tokens", "lots"], "--every-tokens"),
    ([*SMALL, *GROWTH, "--drop-layers", "7:9"], "--drop-layers"),
    ([*SMALL, *GROWTH, "--drop-layers", "1,1,x"], "--drop-layers"),
    ([*SMALL, "--keep", "0"], "--keep"),
    ([*SMALL, "--keep", "16", "--start", "8"], "--start"),
    ([*SMALL, "--target-saving", "1.5"], "--target-saving"),
    ([*SMALL, "--target-saving", "0.6"], "--target-saving"),
    ([*SMALL, "--target-saving", "0.1", "--start", "16", "--full-at", "0.5"], "--target-saving"),
    ([*SMALL, "--target-saving", "0.1", "--every-steps", "5"], "--every-steps"),
    ([*SMALL, *GROWTH, "--d-model", "0"], "--d-model"),
    ([*SMALL, *GROWTH, "--plot", "/no/such/folder/p.png"], "--plot"),
    ([*SMALL, *GROWTH, "--plot", "plan.svg"], "--plot"),
    ([*SMALL, *GROWTH, "--warmup-fraction", "1.5"], "--warmup-fraction"),
    ([*SMALL, *GROWTH, "--min-lr-ratio", "-1"], "--min-lr-ratio"),
    (["--deepspeed-config", "/no/such.json", "--total-steps", "9", "--batch-size", "2"], "--deepspeed-config"),
    (["--deepspeed-config", "/no/such.json", "--total-steps", "9", "--start", "16"], "--start"),
    ([*SMALL, "--mod-capacity", "0"], "--mod-capacity"),
    ([*SMALL, "--mod-capacity", "0.0"], "--mod-capacity"),
    ([*SMALL, "--mod-capacity", "1.5"], "--mod-capacity"),
    ([*SMALL, "--mod-capacity", "1"], "--mod-capacity"),
    ([*SMALL, "--mod-capacity", "-0.5"], "--mod-capacity"),
    ([*SMALL, "--mod-capacity", "1e400"], "--mod-capacity"),
    ([*SMALL, "--mod-capacity", "True"], "--mod-capacity"),
    ([*SMALL, "--mod-capacity", "nan"], "--mod-capacity"),
    ([*SMALL, "--mod-capacity", "abc"], "--mod-capacity"),
    ([*SMALL, "--mod-capacity", "0.5", "--drop-layers", "7:9"], "--drop-layers"),
])
def test_bad_input_is_one_line_naming_the_flag(capsys, argv, flag):
    code, out, err = invoke(capsys, *argv)
    assert code == 2 and not out
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("random-ltd plan: error: ") and flag in err, err


@pytest.mark.parametrize("argv, flag", [
    ([*SMALL, "--mod-capacity", "0.25", "--start", "16"], "--start"),
    ([*SMALL, "--mod-capacity", "0.25", "--start", "16", "--every-steps", "10"], "--start"),
    ([*SMALL, "--mod-capacity", "0.25", "--keep", "32"], "--keep"),
    ([*SMALL, "--mod-capacity", "0.25", "--full-at", "0.5"], "--full-at"),
    ([*SMALL, "--mod-capacity", "0.25", "--multiple-of", "8"], "--multiple-of"),
    ([*SMALL, "--mod-capacity", "0.25", "--target-saving", "0.2"], "--target-saving"),
    (["--deepspeed-config", "ds.json", "--total-steps", "9", "--batch-size", "2", "--mod-capacity", "0.25"],
     "--deepspeed-config"),
])
def test_mod_capacity_with_a_schedule_flag_names_both(capsys, argv, flag):
    code, out, err = invoke(capsys, *argv)
    assert code == 2 and not out and err.count("\n") == 1, err
    assert err.startswith(f"random-ltd plan: error: {flag}: not allowed with --mod-capacity"), err


def test_mod_capacity_json_equals_the_planner_and_brute_force(capsys):
    code, out, err = invoke(capsys, *SMALL, "--mod-capacity", "0.125", "--drop-layers", "1:-1:2", "--json")
    data = json.loads(out)
    training = Training(128, 6, 4, total_steps=500, drop_layers="1:-1:2")
    assert code == 0 and not err and data == build_mod_plan(0.125, training).to_json()
    assert data["method"] == "mod" and data["mod_capacity"] == 0.125 and data["routed_length"] == 16
    assert data["drop_layers"] == [1, 3]
    assert data["mod_layer_tokens"] == brute_force_layer_tokens(lambda t: 16, 128, 4, 6, [1, 3], 500)
    routers = 500 * 3 * 4 * 2 * (2 * 128 * 1024)  # steps, backward x3, batch, routed layers, 2 s d each
    assert data["mod_flops"] == build_plan(ConstantKeep(128, 16), training).flops + routers
    assert 0 < data["layer_token_saving"] < 1 and "random_ltd_layer_tokens" not in data


@pytest.mark.parametrize("text, capacity, routed", [("16", 16, 16), ("1e-1", 0.1, 12), ("0.5", 0.5, 64),
                                                     ("1.0", 1.0, 128), ("500", 500, 128)])
def test_mod_capacity_is_a_fraction_with_a_point_or_e_and_a_count_otherwise(capsys, text, capacity, routed):
    code, out, _ = invoke(capsys, *SMALL, "--mod-capacity", text, "--json")
    data = json.loads(out)
    assert code == 0 and data["mod_capacity"] == capacity and type(data["mod_capacity"]) is type(capacity)
    assert data["routed_length"] == routed


def test_mod_human_output(capsys):
    code, out, err = invoke(capsys, *SMALL, "--mod-capacity", "0.125", "--drop-layers", "1:-1:2")
    plan = build_mod_plan(0.125, Training(128, 6, 4, total_steps=500, drop_layers="1:-1:2"))
    assert code == 0 and not err and out.startswith("Mixture-of-Depths plan\n")
    assert "2 routed layers: 1, 3" in out
    assert "routed layers run the top 16 of 128 tokens (capacity 0.125) plus a router each" in out
    assert f"LayerToken saving  {plan.layer_token_saving:.1%}" in out
    assert f"FLOP saving        {plan.flop_saving:.1%}   (routers included;" in out
    assert "random-LTD" not in out and "kept-length schedule" not in out


def test_mod_at_full_capacity_saves_nothing_and_pays_for_its_routers(capsys):
    _, out, _ = invoke(capsys, *SMALL, "--mod-capacity", "1.0")
    assert "LayerToken saving  0.0%" in out
    assert "FLOP saving        -0.0%   (routers included;" in out, "the routers cost a hair more than nothing"


def test_mod_plot_writes_a_png(capsys, tmp_path):
    target = tmp_path / "mod.png"
    code, out, _ = invoke(capsys, *SMALL, "--mod-capacity", "0.25", "--plot", str(target))
    assert code == 0 and str(target) in out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 10_000


def test_deepspeed_config_errors_name_the_key(capsys, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"random_ltd": {"total_layer_num": 4, "random_ltd_layer_num": 3,
                                               "random_ltd_layer_id": [1, 2], "random_ltd_schedule": {}}}))
    code, _, err = invoke(capsys, "--deepspeed-config", str(path), "--total-steps", "9", "--batch-size", "2")
    assert code == 2 and "--deepspeed-config: random_ltd_layer_num" in err


def test_readme_shows_what_the_command_prints(capsys):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "planning.md").read_text()
    section = text.split("<!-- section: plan -->")[1].split("<!-- /section: plan -->")[0]
    command = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " ").split()
    shown = re.search(r"```text\n(.*?)```", section, flags=re.S).group(1)
    assert command[:2] == ["random-ltd", "plan"]
    code, out, _ = invoke(capsys, *command[2:])
    assert code == 0 and out == shown
    saving = re.search(r"LayerToken saving  ([\d.]+%)", out).group(1)
    assert f"The LayerToken saving of this schedule is {saving}" in section


def test_planning_page_shows_what_the_mod_command_prints(capsys):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "planning.md").read_text()
    section = text.split("<!-- section: plan-mod -->")[1].split("<!-- /section: plan-mod -->")[0]
    command = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " ").split()
    shown = re.search(r"```text\n(.*?)```", section, flags=re.S).group(1)
    assert command[:2] == ["random-ltd", "plan"] and "--mod-capacity" in command
    code, out, _ = invoke(capsys, *command[2:])
    assert code == 0 and out == shown
    saving = re.search(r"LayerToken saving  ([\d.]+%)", out).group(1)
    assert f"The LayerToken saving of this plan is {saving}" in section


TWELVE_LAYERS = ["--seq-len", "512", "--layers", "12", "--batch-size", "4", "--total-steps", "100", "--keep", "128"]


@pytest.mark.parametrize("selection, bound", [("3:40", 40), ("-13:", -13), ("1:13", 13)])
def test_drop_layers_outside_the_stack_is_one_line_exit_2(capsys, selection, bound):
    code, out, err = invoke(capsys, *TWELVE_LAYERS, f"--drop-layers={selection}")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("random-ltd plan: error: --drop-layers:"), err
    assert f"slice bound {bound} is outside a stack of 12 layers" in err


@pytest.mark.parametrize("selection, expected", [("-4:-1", [8, 9, 10]), ("1:12", list(range(1, 12))),
                                                 ("-12:2", [0, 1]), ("1:-1", list(range(1, 11)))])
def test_drop_layers_with_bounds_inside_the_stack_still_work(capsys, selection, expected):
    code, out, _ = invoke(capsys, *TWELVE_LAYERS, f"--drop-layers={selection}", "--json")
    assert code == 0 and json.loads(out)["drop_layers"] == expected
