"""``random-ltd plan``: what a kept-length schedule (or Mixture-of-Depths) saves over a training run (no model needed).

The command parses its flags into a ``random_ltd.plan_request.PlanRequest`` (which holds the rules
of what goes with what) and prints the plan; errors name the flag of the setting."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from random_ltd.cli import UsageError
from random_ltd.cli.plan_output import report, save_plot
from random_ltd.errors import ConfigError
from random_ltd.lr import DECAYS
from random_ltd.plan_request import LRCurves, PlanRequest

DESCRIPTION = """\
Plan a random-LTD run: the kept-length schedule step by step, the layer-tokens it consumes
against the baseline, and the LayerToken and FLOP savings. Pure arithmetic, no model.

Schedules: MSLG from --start, growing by --increment every --every-steps steps, every
--every-tokens training tokens, or reaching --seq-len exactly at --full-at; a constant
--keep (the paper's constant-drop-rate baseline); or a DeepSpeed config.
Inverse mode (--target-saving): with --start, find the interval; otherwise find the start
length that reaches the target with full length at --full-at (default 0.7 of training).
Mixture-of-Depths (--mod-capacity C, instead of a schedule): the --drop-layers are routed,
each running the top C tokens of every sequence plus a router (C with a point or an e is a
fraction in (0, 1], e.g. 0.125; digits alone a token count >= 2); FLOPs include the routers.
Token counts accept K, M, B (or G) and T suffixes: --total-tokens 300B --every-tokens 1.75B.

example (the paper's GPT-3 setting):
  random-ltd plan --seq-len 2048 --layers 24 --start 128 --increment 16 \\
      --every-tokens 1.75B --total-tokens 300B --batch-size 256
Mixture-of-Depths at 12.5% on every other block:
  random-ltd plan --seq-len 2048 --layers 24 --drop-layers 1:-1:2 --mod-capacity 0.125 \\
      --total-tokens 300B --batch-size 256
"""

EPILOG = """\
--json prints one object with these keys:
  method                   "random_ltd", or "mod" with --mod-capacity
  layer_token_saving       fraction of layer-tokens saved, 1 - random_ltd (or mod) / baseline
  flop_saving              fraction of training FLOPs saved (estimate, see flop_model)
  baseline_layer_tokens    layer-tokens without dropping: steps * batch * seq_len * layers
  random_ltd_layer_tokens  layer-tokens with the schedule (dropping layers count the kept length)
  baseline_flops, random_ltd_flops   training FLOPs (3 x forward matmuls; attention's s^2 term included)
  drop_layers              indices of the layers that drop tokens
  schedule                 [{"step": int, "kept": int}, ...] at step 0 and at every change
  full_length_step         first step at full length (null: never within training)
  schedule_config          the schedule's settings (its state_dict)
  seq_len, num_layers, batch_size, tokens_per_step, total_steps, total_tokens
  flop_model               {"d_model", "ffn_dim", "vocab_size"} used for the FLOP estimate
  target_saving            (only with --target-saving) the requested saving
with --mod-capacity, instead of random_ltd_layer_tokens and random_ltd_flops:
  mod_layer_tokens         layer-tokens with routing (routed layers count routed_length)
  mod_flops                training FLOPs, each routed layer's router (2 s d per sequence) included
  mod_capacity             the capacity given; routed_length: tokens a routed layer runs per sequence
  drop_layers, schedule    the routed layers; one entry, the routed length from step 0

Exit status: 0 on success, 2 on bad input (one line naming the flag).
"""

FLAGS = {"num_layers": "--layers"}  # settings whose flag is not "--" + the name with dashes
SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
REQUEST_FIELDS = {"seq_len": "seq_len", "num_layers": "layers", "drop_layers": "drop_layers",
                  "batch_size": "batch_size", "total_steps": "total_steps", "total_tokens": "total_tokens",
                  "deepspeed_config": "deepspeed_config", "start": "start", "increment": "increment",
                  "every_steps": "every_steps", "every_tokens": "every_tokens", "full_at": "full_at", "keep": "keep",
                  "multiple_of": "multiple_of", "target_saving": "target_saving", "d_model": "d_model",
                  "ffn_dim": "ffn_dim", "vocab_size": "vocab_size",
                  "mod_capacity": "mod_capacity"}  # PlanRequest field: argparse dest


def count(text: str) -> float:
    """A token count: ``300B``, ``1.75e9``, ``4096``."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([KMBGT]?)\s*", text, flags=re.IGNORECASE)
    try:
        value = float(match.group(1)) * SUFFIXES.get(match.group(2).upper(), 1) if match else None
    except ValueError:
        value = None
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count like 300B or 1.75e9")
    return int(value) if value == int(value) else value


def full_at(text: str) -> int | float:
    """A step (``400000``) or a fraction of training (``0.7``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a step nor a fraction of training") from None
    return int(value) if value > 1 and value == int(value) else value


def capacity(text: str) -> float | int:
    """A Mixture-of-Depths capacity: with a point or an ``e`` a fraction (``0.125``, ``1e-1``), digits alone a count."""
    try:
        return float(text) if any(c in text.lower() for c in ".e") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a fraction like 0.125 nor a token count") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser("plan", help="plan a schedule (or MoD): kept lengths, layer-token and FLOP savings",
                                   description=DESCRIPTION, epilog=EPILOG, hint="",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_flags(parser.add_argument_group("model and run"))
    _add_schedule_flags(parser.add_argument_group("schedule"))
    _add_flop_flags(parser.add_argument_group("FLOP estimate"))
    _add_output_flags(parser.add_argument_group("output"))
    parser.set_defaults(func=run)


def _add_run_flags(group) -> None:
    group.add_argument("--seq-len", type=int, metavar="S", help="full sequence length s")
    group.add_argument("--layers", type=int, metavar="L", help="number of transformer layers L")
    group.add_argument("--drop-layers", metavar="SEL",
                       help='layers that drop tokens (the routed ones with --mod-capacity): slice or list '
                            '(default "1:-1": all but first and last)')
    group.add_argument("--batch-size", type=int, metavar="B", help="sequences per optimizer step (global batch)")
    totals = group.add_mutually_exclusive_group()
    totals.add_argument("--total-steps", type=int, metavar="N", help="training length in steps")
    totals.add_argument("--total-tokens", type=count, metavar="N",
                        help="training length in tokens (steps = ceil(tokens / (batch x s)))")
    group.add_argument("--deepspeed-config", metavar="FILE",
                       help="read the schedule and layers from a DeepSpeed JSON config")


def _add_schedule_flags(group) -> None:
    group.add_argument("--start", type=int, metavar="K", help="kept length at step 0")
    group.add_argument("--increment", type=int, metavar="K", default=16,
                       help="growth of the kept length per interval (default 16)")
    when = group.add_mutually_exclusive_group()
    when.add_argument("--every-steps", type=int, metavar="N", help="grow every N steps")
    when.add_argument("--every-tokens", type=count, metavar="N", help="grow every N training tokens")
    when.add_argument("--full-at", type=full_at, metavar="STEP|FRACTION",
                      help="reach full length at this step (> 1) or fraction of training (<= 1, e.g. 0.7)")
    when.add_argument("--keep", type=int, metavar="K", help="constant kept length instead of MSLG (ablation baseline)")
    group.add_argument("--multiple-of", type=int, metavar="M", help="round kept lengths down to a multiple of M")
    group.add_argument("--target-saving", type=float, metavar="FRACTION",
                       help="inverse mode: solve for this LayerToken saving")
    group.add_argument("--mod-capacity", type=capacity, metavar="C",
                       help="plan Mixture-of-Depths instead: the --drop-layers run the top C tokens (a fraction "
                            "in (0, 1] like 0.125, or an int count) plus a router each; no schedule flags")


def _add_flop_flags(group) -> None:
    group.add_argument("--d-model", type=int, metavar="D", default=1024, help="hidden size (default 1024)")
    group.add_argument("--ffn-dim", type=int, metavar="F", help="feed-forward size (default 4 x --d-model)")
    group.add_argument("--vocab-size", type=int, metavar="V", default=0, help="output vocabulary (default 0: left out)")


def _add_output_flags(group) -> None:
    group.add_argument("--json", action="store_true", help="print one JSON object (keys below)")
    group.add_argument("--plot", metavar="FILE.png", help="save a plot of the kept length and the LR over training")
    group.add_argument("--lr-decay", choices=DECAYS, default="cosine", help="LR decay in the plot (default cosine)")
    group.add_argument("--warmup-fraction", type=float, metavar="F", default=0.0,
                       help="LR warmup in the plot, fraction of training")
    group.add_argument("--min-lr-ratio", type=float, metavar="R", default=0.1,
                       help="LR floor in the plot (default 0.1)")


def run(args: argparse.Namespace) -> int:
    try:
        curves = LRCurves(warmup_fraction=args.warmup_fraction, decay=args.lr_decay, min_lr_ratio=args.min_lr_ratio)
        request = PlanRequest(**{field: getattr(args, dest) for field, dest in REQUEST_FIELDS.items()})
        plan = request.plan(on_warning=lambda message: print(f"random-ltd plan: warning: {message}", file=sys.stderr))
        if args.plot:
            check_plot_path(args.plot)
            save_plot(plan, args.plot, curves.of(plan))
    except ConfigError as error:
        raise UsageError(f"{FLAGS.get(error.field, error.flag)}: {error.message}") from None
    if args.json:
        print(json.dumps(plan.to_json() | ({"target_saving": args.target_saving} if args.target_saving else {})))
    else:
        print(report(plan, target_saving=args.target_saving, plot=args.plot))
    return 0


def check_plot_path(path: str) -> None:
    if not path.lower().endswith(".png"):
        raise ConfigError("plot", f"{path!r} must end in .png")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError("plot", f"folder {folder!r} does not exist")
