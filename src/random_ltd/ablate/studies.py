"""The paper's claims as studies: arms to train and claims to judge.

Section 4's headline results (GPT and BERT pretraining, ViT, finetuning a pretrained model) and
Section 5's ablations; ``dit`` checks TREAD's (Krause et al. 2025) claims on a diffusion
transformer, ``mod`` Mixture-of-Depths (Raposo et al. 2024) against random-LTD at equal FLOPs.
Every study starts from one base configuration of ``random-ltd train`` and changes only what the
paper's experiment changes; ``lr-small`` and ``budget-small`` rerun two
ablations at a larger model size. The settings, the claims and each study's number of seeds were
written down before any run; ``docs/results.md`` reports what came out.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from random_ltd.ablate.runs import Arm, prepared_task
from random_ltd.accounting import kept_segments
from random_ltd.layer_selection import parse_layer_selection
from random_ltd.schedules import ConstantKeep
from random_ltd.search import first_true
from random_ltd.tokenbypass import bypass_range
from random_ltd.train.arms import make_schedule, plan_arms, step_flops
from random_ltd.train.tasks import budget_steps, make_task, resolve_config

VIT_STEPS, FINETUNE_STEPS = 200, 40
GPT = dict(task="gpt", model_size="tiny", layers=6, seq_len=128, batch_size=8, steps=300, vocab_size=1024,
           corpus_mb=2.0, lr=2e-3, dropout=0.0, eval_every=30, eval_batches=8, kept_start=16, kept_increment=8,
           full_at=0.7)
GPT_QUICK = dict(task="gpt", quick=True, model_size="tiny", layers=6, seq_len=32, batch_size=4, steps=6,
                 vocab_size=256, corpus_mb=0.2, lr=2e-3, dropout=0.0, eval_every=3, eval_batches=1, kept_start=8,
                 kept_increment=8, full_at=0.7)
VIT = dict(task="vit", model_size="tiny", layers=12, patch_size=2, batch_size=16, steps=VIT_STEPS, lr=1e-3,
           dropout=0.0, eval_every=VIT_STEPS // 4, eval_batches=32, kept_start=66, full_at=0.8)  # 512 test images
VIT_QUICK = dict(task="vit", quick=True, model_size="tiny", layers=4, patch_size=7, batch_size=16, steps=6, lr=2e-3,
                 dropout=0.0, eval_every=3, eval_batches=2, kept_start=6, full_at=0.8)
# The whole pretrained SmolLM2-135M (30 layers: cut to fewer, it starts far from its own loss and the
# study would measure recovery from the cut), 64-token sequences: about 3 CPU-seconds a step
FINETUNE = dict(task="finetune", layers=30, seq_len=64, batch_size=4, steps=FINETUNE_STEPS, corpus_mb=2.0, lr=1e-4,
                eval_every=FINETUNE_STEPS // 5, eval_batches=4, kept_start=16, full_at=0.7)
FINETUNE_QUICK = dict(task="finetune", quick=True, layers=4, seq_len=32, batch_size=2, steps=4, corpus_mb=0.3,
                      lr=1e-4, eval_every=2, eval_batches=1, kept_start=8, full_at=0.75)
# The dit study (issue 23): a tiny DiT, patch 4 (49 image tokens), the dit task's --quick model
# with twice its steps and evaluation, sized so 4 arms x 3 seeds run in about 12 minutes on 2 cores.
DIT = dict(task="dit", model_size="tiny", patch_size=4, batch_size=16, steps=120, lr=2e-3, dropout=0.0,
           eval_every=30, eval_batches=4, full_at=0.8)
DIT_QUICK = dict(task="dit", quick=True, model_size="tiny", patch_size=7, batch_size=8, steps=6, lr=2e-3,
                 dropout=0.0, eval_every=3, eval_batches=1, full_at=0.8)
TREAD_STEP_FRACTION = 3 / 4  # "fewer steps": TREAD trains 3/4 of the baseline's steps
DIT_SEEDS = 3
# The mod study (issue 24): the MoD paper's best setting (12.5% capacity, every other block) and MoD
# in random-LTD's own layers at half capacity, each trained for the most steps within the baseline's FLOPs.
MOD_SPARSE = dict(mod_capacity=0.125, drop_layers="1:5:2")  # layers 1 and 3 of 6
MOD_HALF = dict(mod_capacity=0.5, drop_layers="1:-1")
SMALL_CORPUS_MB = {False: 0.04, True: 0.05}  # the dropout study: small enough that the baseline overfits
DROPOUT = 0.1
# Seeds per study, fixed before any run (a verdict must not decide how many seeds it gets):
# Section 5's ablations at 10, the costlier Section 4 studies and small-size reruns at 5.
ABLATION_SEEDS, HEADLINE_SEEDS, QUICK_SEEDS = 10, 5, 2


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of the paper: arm(s) ``a`` against arm(s) ``b`` on a lower-is-better ``metric``;
    several labels on one side are averaged per seed. ``kind``: see ``verdict.judge``.
    ``needs_overfitting``: the claim can only be tested if ``b`` overfits (its validation loss
    rises above its minimum by more than the tolerance); otherwise it is inconclusive.
    ``higher_is_better`` (accuracy): the rules are applied to B − A instead of A − B, and the
    tolerance is a fraction of B's mean ``metric`` instead of its validation loss."""

    section: str
    text: str
    kind: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    metric: str = "final_val_loss"
    needs_overfitting: bool = False
    higher_is_better: bool = False

    @property
    def tolerance_metric(self) -> str:
        return self.metric if self.higher_is_better else "final_val_loss"


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    section: str
    title: str
    setup: str
    build: Callable[[bool], tuple[list[Arm], list[Claim]]]
    seeds: int = ABLATION_SEEDS
    rerun_of: str | None = None  # the study this one repeats at another model size
    budget: str = "layer_tokens"  # what its arms are matched on: "layer_tokens" or "flops" (tables, plots)

    def seeds_for(self, quick: bool) -> int:
        return QUICK_SEEDS if quick else self.seeds


def base(quick: bool, **changes) -> dict:
    return {**(GPT_QUICK if quick else GPT), **changes}


def baseline(settings: dict, label: str = "baseline") -> Arm:
    return Arm.make(label, "baseline", settings)


def random_ltd(label: str, settings: dict, method: str | None = None) -> Arm:
    return Arm.make(label, "random_ltd", settings, method)


def as_slice(indices: list[int]) -> str:
    return f"{indices[0]}:{indices[-1] + 1}"


def layer_token_saving(settings: dict) -> float:
    """The random-LTD arm's layer-token saving against the baseline over the same steps."""
    config = resolve_config(Arm.make("", "random_ltd", settings).config(1, 0, "cpu"))
    steps, layers = budget_steps(config), config.layers
    dropping = len(parse_layer_selection(config.drop_layers, layers))
    segments = kept_segments(make_schedule(config, config.seq_len, steps), steps)
    kept = sum(length * count for _, length, count in segments) / steps
    return dropping / layers * (1 - kept / config.seq_len)


def saving_label(settings: dict) -> str:
    return f"random-LTD, {layer_token_saving(settings):.0%} fewer layer-tokens"


def against_baseline(claim_text: str, settings: dict, ltd_settings: dict | None = None,
                     baseline_label: str = "baseline", **claim_options) -> tuple[list[Arm], list[Claim]]:
    """A Section 4 study: the baseline at ``settings`` against one random-LTD arm (``ltd_settings``,
    default the same), named by its layer-token saving; the claim: random-LTD is no worse."""
    ltd_settings = ltd_settings or settings
    ltd = saving_label(ltd_settings)
    claim = Claim("4", claim_text, "no_worse", (ltd,), (baseline_label,), **claim_options)
    return [baseline(settings, baseline_label), random_ltd(ltd, ltd_settings)], [claim]


def gpt_pretraining(quick: bool):
    """MSLG from s/16 (the paper's 128 of 2048) to full at 90% of training: 30% fewer layer-tokens
    with 4 of 6 layers dropping (the paper's 1/3 is with 22 of 24)."""
    settings = base(quick)
    return against_baseline("GPT pretraining: random-LTD on about 1/3 fewer layer-tokens reaches the baseline's "
                            "validation loss at full budget (comparable quality)",
                            settings, {**settings, "kept_start": settings["seq_len"] // 16, "full_at": 0.9})


def bert_pretraining(quick: bool):
    """MSLG from s/8 to full at 90% of training: 28% fewer layer-tokens (the paper's 26.2-31.1%)."""
    settings = base(quick, task="bert")
    return against_baseline("BERT pretraining: random-LTD at the paper's 26-31% layer-token saving reaches the "
                            "baseline's validation MLM loss (comparable or better)",
                            settings, {**settings, "kept_start": settings["seq_len"] // 8, "full_at": 0.9})


def vit(quick: bool):
    return against_baseline("ViT on Fashion-MNIST: random-LTD (kept length from 66 of 197, full at 80% of training) "
                            "reaches the baseline's validation accuracy (comparable accuracy)",
                            VIT_QUICK if quick else VIT, metric="final_val_accuracy", higher_is_better=True)


def finetune(quick: bool):
    return against_baseline("Finetuning pretrained SmolLM2-135M: random-LTD reaches plain finetuning's validation "
                            "perplexity at equal steps (judged on its log, the validation loss)",
                            FINETUNE_QUICK if quick else FINETUNE, baseline_label="plain finetuning")


def bypass(quick: bool):
    settings = base(quick)
    layers, half = settings["layers"], settings["seq_len"] // 2
    arms, claims = [baseline(settings)], []
    for number, setting in ((1, "middle"), (2, "second")):
        drop = as_slice(bypass_range(setting, layers))
        constant = {**settings, "schedule": "constant", "kept_start": half, "drop_layers": drop}
        ltd, tb = f"random-LTD, layers {drop}", f"TokenBypass, layers {drop}"
        arms += [random_ltd(ltd, constant), random_ltd(tb, constant, method="tokenbypass")]
        claims.append(Claim("5.1", f"Set {number}: dropping half the tokens in layers {drop} (0-based slice), "
                                   "random-LTD beats TokenBypass on causal LM", "better", (ltd,), (tb,)))
    return arms, claims


def special_tokens(quick: bool):
    settings = base(quick, task="bert", kept_start=8 if quick else 32)
    plain, kept = "random-LTD", "random-LTD, [CLS]/[SEP] always kept"
    arms = [baseline(settings), random_ltd(plain, settings), random_ltd(kept, settings, method="random_ltd_protected")]
    claim = Claim("5.2", "Always keeping [CLS]/[SEP] gives random-LTD no benefit (plain random-LTD is no worse)",
                  "no_worse", (plain,), (kept,))
    return arms, [claim]


def layers(quick: bool):
    settings = base(quick)
    count, half = settings["layers"], settings["seq_len"] // 2
    chosen = {"all but first and last": "1:-1", "all layers": ":", "all but first": "1:", "all but last": ":-1"}
    # "1:-1" is the training program's default: leaving it unset shares the arm with schedule and lr
    arms = [baseline(settings)] + [random_ltd(f"MSLG, {name}", settings if drop == "1:-1" else
                                              {**settings, "drop_layers": drop}) for name, drop in chosen.items()]
    single = [f"drop half in layer {i} only" for i in range(count)]
    arms += [random_ltd(label, {**settings, "schedule": "constant", "kept_start": half, "drop_layers": str(i)})
             for i, label in enumerate(single)]
    keep_ends = "MSLG, all but first and last"
    claims = [Claim("5.3", f"Keeping the first and last layers full beats dropping in {name}", "better",
                    (keep_ends,), (f"MSLG, {name}",)) for name in list(chosen)[1:]]
    middle = tuple(single[1:-1])
    claims += [Claim("5.3", f"Single-layer sweep is U-shaped: dropping in the {end} layer hurts more than in a "
                            "middle layer (mean over middle layers)", "better", middle, (label,))
               for end, label in (("first", single[0]), ("last", single[-1]))]
    return arms, claims


def matching_constant_keep(settings: dict) -> int:
    """The constant kept length whose layer-tokens equal MSLG's over the same steps."""
    config = resolve_config(Arm.make("", "random_ltd", settings).config(1, 0, "cpu"))
    steps = budget_steps(config)
    segments = kept_segments(make_schedule(config, config.seq_len, steps), steps)
    return round(sum(kept * count for _, kept, count in segments) / steps)


def schedule(quick: bool):
    settings = base(quick)
    keep = matching_constant_keep(settings)
    constant = f"constant kept length {keep}"
    arms = [baseline(settings), random_ltd("MSLG", settings),
            random_ltd(constant, {**settings, "schedule": "constant", "kept_start": keep})]
    claim = Claim("5.4", "At equal layer-token saving, MSLG beats a constant drop rate", "better",
                  ("MSLG",), (constant,))
    return arms, [claim]


def lr(quick: bool, model_size: str = "tiny"):
    settings = base(quick, model_size=model_size)
    token_lr, step_lr = "random-LTD, LayerToken LR", "random-LTD, iteration LR"
    arms = [baseline(settings), random_ltd(token_lr, settings),
            random_ltd(step_lr, {**settings, "lr_clock": "steps"})]
    claims = [Claim("5.5", "Random-LTD with the LayerToken LR reaches the baseline's validation loss", "no_worse",
                    (token_lr,), ("baseline",)),
              Claim("5.5", "The LayerToken LR beats the iteration LR under random-LTD", "better",
                    (token_lr,), (step_lr,))]
    return arms, claims


def budget(quick: bool, model_size: str = "tiny"):
    settings = base(quick, model_size=model_size)
    steps = settings["steps"]
    larger = {**settings, "steps": steps * 3 // 2}
    arms = [baseline(settings, "baseline, budget B"), baseline(larger, "baseline, budget 1.5B"),
            random_ltd("random-LTD, 2/3 of B", {**settings, "budget_ratio": 2 / 3}),
            random_ltd("random-LTD, 2/3 of 1.5B", {**larger, "budget_ratio": 2 / 3})]
    claims = [Claim("5.6", f"Random-LTD on 2/3 of the layer-tokens matches the baseline at budget {name}", "no_worse",
                    (f"random-LTD, 2/3 of {name}",), (f"baseline, budget {name}",)) for name in ("B", "1.5B")]
    claims.append(Claim("5.6", "A larger budget gives a better model (baseline 1.5B beats B)", "better",
                        ("baseline, budget 1.5B",), ("baseline, budget B",)))
    return arms, claims


def dropout(quick: bool):
    settings = base(quick, corpus_mb=SMALL_CORPUS_MB[quick])
    with_dropout = {**settings, "dropout": DROPOUT}
    arms = [baseline(settings, "baseline, no dropout"), baseline(with_dropout, f"baseline, dropout {DROPOUT}"),
            random_ltd("random-LTD, no dropout", settings), random_ltd(f"random-LTD, dropout {DROPOUT}", with_dropout)]
    pair = (("random-LTD, no dropout",), ("baseline, no dropout",))
    claims = [Claim("5.7", "Without dropout, random-LTD ends with a lower validation loss than the baseline",
                    "better", *pair),
              Claim("5.7", "Without dropout, random-LTD overfits less: its validation loss rises less above its "
                           "minimum", "better", *pair, metric="overfit_rise", needs_overfitting=True)]
    return arms, claims


def tread_layer_token_ratio(settings: dict) -> float:
    """The tread arm's layer-tokens as a fraction of the baseline's over the same steps."""
    config = resolve_config(Arm.make("", "tread", settings).config(1, 0, "cpu"))
    plans = plan_arms(dataclasses.replace(config, arms=("baseline", "tread")), make_task(config).shape())
    return plans["tread"].layer_tokens / plans["baseline"].layer_tokens


def dit(quick: bool):
    """TREAD (one route keeping half the tokens through the span of layers 1..B-2) against the
    baseline at fewer steps, and against random-LTD (MSLG) trained to TREAD's layer-tokens."""
    settings = DIT_QUICK if quick else DIT
    fewer = max(1, round(settings["steps"] * TREAD_STEP_FRACTION))
    ratio = tread_layer_token_ratio(settings)
    tread_fewer, tread_full = f"TREAD, {fewer} steps", f"TREAD, {settings['steps']} steps"
    ltd = f"random-LTD (MSLG), TREAD's layer-tokens ({ratio:.0%} of the baseline's)"
    arms = [baseline(settings), Arm.make(tread_fewer, "tread", {**settings, "steps": fewer}),
            Arm.make(tread_full, "tread", settings), random_ltd(ltd, {**settings, "budget_ratio": ratio})]
    claims = [Claim("TREAD", f"TREAD reaches the baseline's quality in fewer steps: after {fewer} of the "
                             f"baseline's {settings['steps']} steps its validation loss is no worse", "no_worse",
                    (tread_fewer,), ("baseline",)),
              Claim("TREAD", "At equal layer-tokens, random-LTD (MSLG) reaches TREAD's validation loss", "no_worse",
                    (ltd,), (tread_full,))]
    return arms, claims


def training_flops(arm: Arm) -> int:
    """``arm``'s training FLOPs over all its steps, the estimate ``random-ltd train`` counts step by step
    (the vocabulary, in the output layer's cost, is the tokenizer's: the task's data is prepared)."""
    config = resolve_config(arm.config(1, 0, "cpu"))
    shape = prepared_task(config).shape()
    plan = plan_arms(config, shape)[arm.arm]
    schedule = plan.schedule or ConstantKeep(shape.seq_len, shape.seq_len)
    return sum(count * step_flops(config, shape, plan, kept) for _, kept, count in kept_segments(schedule, plan.steps))


def steps_within_flops(kind: str, settings: dict, budget: int) -> int:
    """The most steps of a ``kind`` arm whose training FLOPs stay within ``budget`` (a schedule is
    stretched to each candidate length, as it would be in training)."""
    def over_budget(steps: int) -> bool:
        return training_flops(Arm.make("", kind, {**settings, "steps": steps})) > budget

    most = 4 * settings["steps"]  # every arm here saves well under 3/4 of the baseline's FLOPs
    if not over_budget(most):
        raise ValueError(f"a {kind} arm within {budget:.3g} FLOPs would train more than {most} steps")
    return max(1, first_true(over_budget, 1, most) - 1)


def mod(quick: bool):
    """Mixture-of-Depths (two settings) and random-LTD (MSLG), each for the most steps within the
    baseline's training FLOPs; claims fixed before any run."""
    settings = base(quick)
    budget = training_flops(baseline(settings))
    ltd_settings = {**settings, "steps": steps_within_flops("random_ltd", settings, budget)}
    sparse = {**settings, **MOD_SPARSE}
    half = {**settings, **MOD_HALF}
    sparse = {**sparse, "steps": steps_within_flops("mod", sparse, budget)}
    half = {**half, "steps": steps_within_flops("mod", half, budget)}
    ltd_label, sparse_label, half_label = ("random-LTD (MSLG), layers 1-4", "MoD 12.5%, layers 1 and 3",
                                           "MoD 50%, layers 1-4")
    arms = [baseline(settings), random_ltd(ltd_label, ltd_settings), Arm.make(sparse_label, "mod", sparse),
            Arm.make(half_label, "mod", half)]
    equal = "at the baseline's training FLOPs"
    claims = [Claim("MoD", f"MoD in the paper's setting (12.5% capacity, every other layer) {equal} reaches the "
                           "baseline's validation loss (isoFLOP)", "no_worse", (sparse_label,), ("baseline",)),
              Claim("MoD", f"MoD at half capacity in random-LTD's layers {equal} reaches the baseline's validation "
                           "loss", "no_worse", (half_label,), ("baseline",)),
              Claim("MoD", f"Random-LTD (MSLG) {equal} reaches the baseline's validation loss", "no_worse",
                    (ltd_label,), ("baseline",)),
              Claim("MoD", "At equal training FLOPs, MoD's learned routing (paper's setting) beats random-LTD's "
                           "random routing", "better", (sparse_label,), (ltd_label,))]
    return arms, claims


SMALL_RERUN = "The same arms and claims as `{name}`, with the `small` GPT-2 (width 192 instead of 64)."

STUDIES = {study.name: study for study in (
    Study("gpt", "4", "GPT pretraining at 1/3 fewer layer-tokens",
          "GPT-2 causal LM; random-LTD with MSLG from s/16 to full length at 90% of training in layers 1..4 of 6 "
          "(30% fewer layer-tokens; the paper's 1/3 drops 22 of 24 layers) against the baseline at the same steps.",
          gpt_pretraining, seeds=HEADLINE_SEEDS),
    Study("bert", "4", "BERT pretraining at 26-31% fewer layer-tokens",
          "BERT masked LM; random-LTD with MSLG from s/8 to full length at 90% of training (28% fewer "
          "layer-tokens) against the baseline at the same steps.", bert_pretraining, seeds=HEADLINE_SEEDS),
    Study("vit", "4", "ViT on Fashion-MNIST",
          f"A 12-layer ViT (width 64) on Fashion-MNIST, patch size 2: 197 tokens; random-LTD in layers 1..10 with "
          f"MSLG from 66 tokens to full length at 80% of training; {VIT_STEPS} steps of 16 images. Judged on "
          "validation accuracy (first 512 test images), higher is better.", vit, seeds=HEADLINE_SEEDS),
    Study("finetune", "4", "Finetuning a pretrained model (SmolLM2-135M)",
          f"Causal-LM finetuning of the whole pretrained SmolLM2-135M (30 layers), sized for a CPU: 64-token "
          f"sequences, batch 4, {FINETUNE_STEPS} steps at LR 1e-4; random-LTD in layers 1..28 with MSLG from 16 "
          "tokens to full length at 70% of training, against plain finetuning at the same steps.",
          finetune, seeds=HEADLINE_SEEDS),
    Study("bypass", "5.1", "Random-LTD vs TokenBypass (causal LM)",
          "GPT-2, constant kept length s/2 in both methods; TokenBypass keeps the tokens with the highest "
          "moving-average loss (and end-of-text), random-LTD a uniform random half per layer.", bypass),
    Study("special-tokens", "5.2", "Special-token treatment (BERT)",
          "BERT masked LM, MSLG; one arm always keeps the positions of [CLS] and [SEP] in every dropping layer.",
          special_tokens),
    Study("layers", "5.3", "Which layers drop",
          "GPT-2, MSLG in four layer sets; then a constant drop of half the tokens in one layer at a time.", layers),
    Study("schedule", "5.4", "MSLG vs a constant drop rate",
          "GPT-2; the constant kept length is the MSLG run's mean kept length, so both save the same layer-tokens.",
          schedule),
    Study("lr", "5.5", "LayerToken LR vs iteration LR",
          "GPT-2, MSLG; the same warmup + cosine decay clocked by layer-tokens or by steps.", lr),
    Study("lr-small", "5.5", "LayerToken LR vs iteration LR, small model", SMALL_RERUN.format(name="lr"),
          lambda quick: lr(quick, model_size="small"), seeds=HEADLINE_SEEDS, rerun_of="lr"),
    Study("budget", "5.6", "Training budgets (Table 7)",
          "GPT-2; baseline at budgets B and 1.5B steps; random-LTD (MSLG) trained until it has used 2/3 of each "
          "baseline's layer-tokens.", budget),
    Study("budget-small", "5.6", "Training budgets (Table 7), small model", SMALL_RERUN.format(name="budget"),
          lambda quick: budget(quick, model_size="small"), seeds=HEADLINE_SEEDS, rerun_of="budget"),
    Study("dropout", "5.7", "Random-LTD and dropout",
          "GPT-2 on a small corpus trained for many epochs, so that the baseline overfits; each arm with and "
          f"without dropout {DROPOUT}. overfit_rise = final validation loss - its minimum during training.", dropout),
    Study("dit", "TREAD", "Diffusion transformer: TREAD vs the baseline and random-LTD",
          "Class-conditional DiT (diffusers, 4 layers, width 32) on Fashion-MNIST, rectified flow, patch 4: 49 "
          "image tokens; validation loss = mean flow loss at noise levels 0.1..0.9 (fixed images and noise). "
          "TREAD routes a uniform random half of each image's tokens past layers 1..2 (one span, drawn once per "
          "forward); random-LTD (MSLG from half to full length at 80% of its steps, in layers 1..2) trains the "
          "fewest steps that use TREAD's layer-tokens. Seeds and settings fixed before the run.", dit,
          seeds=DIT_SEEDS),
    Study("mod", "MoD", "Mixture-of-Depths vs random-LTD at equal training FLOPs",
          "GPT-2 causal LM (the `gpt` study's model and data). Every arm trains for the most steps whose training "
          "FLOPs (the estimate `random-ltd train` counts, MoD's routers included) stay within the baseline's at "
          "300 steps: random-LTD with MSLG in layers 1..4; Mixture-of-Depths (learned expert-choice top-k routers, "
          "router-prediction loss 0.01) at 12.5% capacity in every other layer (1 and 3, the MoD paper's best "
          "setting) and at 50% in layers 1..4. Each arm is validated as it would run at inference: random-LTD at "
          "full length, MoD routing causally (a token runs a routed layer when its router logit is positive, one "
          "sequence at a time). Seeds and settings fixed before the run.", mod, seeds=HEADLINE_SEEDS,
          budget="flops"),
)}
