"""``random-ltd bench``: wall-clock and memory cost of random-LTD against the ideal it approximates."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from random_ltd.cli import UsageError

DESCRIPTION = """\
Measure, interleaved and repeated (min and median reported):
  stack   forward+backward of a stack of GPT-2 blocks: (a) full length, (b) random-LTD at kept
          length k, (c) the ideal (middle layers on one contiguous k-token slice);
          overhead = (b-c)/a, realised fraction = (a-b)/(a-c)
  train   a training step (model, loss, AdamW) of the `gpt` task's model at several kept lengths
  memory  peak memory of one step of (a), (b), (c), each in a fresh subprocess
  run     a whole MSLG run vs the baseline: wall-clock saving vs layer-token and FLOP saving
  compile torch.compile compilations and graph breaks over the run's kept lengths (model or
          blocks compiled; unrounded, rounded to a multiple, or dynamic) and compiled step times
          (not in --quick unless asked for)
"""

EPILOG = """\
JSON (--json): one object with keys schema, date, machine, conditions, settings, stack, train_step,
memory, whole_run, compile (each present when its section ran) and targets; docs/benchmarks.md documents every key.
Times are seconds, memory bytes, savings and overheads fractions.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure random-LTD's wall-clock overhead, saving and memory",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, seconds: checks the machinery (CI)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object instead of tables")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON result to FILE")
    parser.add_argument("--plot", metavar="FILE", help="also draw the stack, training-step and whole-run figures "
                        "to FILE (PNG; needs matplotlib)")
    parser.add_argument("--sections", help="comma-separated subset of stack,train,memory,run,compile "
                        "(default: all; --quick: all but compile)")
    parser.add_argument("--shapes", help="comma-separated layer-stack shapes: gpt2-small (d=768, seq 1024), "
                        "cpu-d256 (d=256, seq 1024), gpt2-medium (d=1024, seq 1024, 24 layers), quick "
                        "(default: gpt2-small,cpu-d256; --quick: quick)")
    parser.add_argument("--repeats", type=int, help="timed rounds per variant (default 5; --quick 2)")
    parser.add_argument("--run-steps", type=int, help="steps of the whole MSLG run (default: the gpt task's 300)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                        help="fp32, or bf16 autocast (mixed precision; meant for a GPU)")
    parser.add_argument("--threads", type=int,
                        help="torch.set_num_threads for every variant (default: torch's; --quick: 1)")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="clock of the derived figures: wall (default), or cpu = process CPU time, which "
                        "stands for the wall-clock of an undisturbed run on a shared machine (needs --threads 1)")
    parser.add_argument("--compile-backend", default="eager",
                        help="torch.compile backend of the compile section (default eager: counts without codegen)")
    parser.add_argument("--compile-multiple", type=int, default=16,
                        help="rounding of the kept lengths in the compile section (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    import dataclasses

    import torch

    from random_ltd.bench.config import SECTIONS, STACK_SHAPES, default_config, quick_config

    for flag, value in (("--repeats", args.repeats), ("--run-steps", args.run_steps), ("--threads", args.threads),
                        ("--compile-multiple", args.compile_multiple)):
        if value is not None and value <= 0:
            raise UsageError(f"{flag}: must be a positive integer, got {value}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device: not a device: {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: only cpu and cuda are supported, got {args.device!r}")
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if args.clock == "cpu" and (threads != 1 or device.type != "cpu"):
        raise UsageError("--clock: cpu time stands for wall-clock only on --device cpu with --threads 1")
    overrides = dict(device=str(device), dtype=args.dtype, clock=args.clock, seed=args.seed,
                     compile_backend=args.compile_backend, compile_multiple=args.compile_multiple)
    if args.sections is not None:
        overrides["sections"] = _sections(args.sections, SECTIONS)
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.repeats is not None:
        overrides["repeats"] = args.repeats
    if args.shapes is not None:
        overrides["stack_shapes"] = _shapes(args.shapes, STACK_SHAPES)
    config = (quick_config if args.quick else default_config)(**overrides)
    if args.run_steps is not None:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, steps=args.run_steps))
    return config


def _sections(text: str, known: tuple) -> tuple:
    sections = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in sections if part not in known]
    if unknown or not sections:
        raise UsageError(f"--sections: unknown {','.join(unknown) or '(empty)'}; choose from {','.join(known)}")
    return sections


def _shapes(text: str, known: dict) -> tuple:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise UsageError(f"--shapes: unknown {','.join(unknown) or '(empty)'}; choose from {','.join(known)}")
    return tuple(known[name] for name in names)


def run(args: argparse.Namespace) -> int:
    from random_ltd.bench import report, run_bench

    config = build_config(args)
    if args.out:
        _check_folder("--out", args.out)
    if args.plot:
        _check_plotting(args.plot)
    save = (lambda result: _write_json(result, Path(args.out))) if args.out else None
    try:
        result = run_bench(config, on_section=save)
    except KeyboardInterrupt:
        kept = f"; the finished sections are in {args.out}" if args.out else ""
        print(f"random-ltd bench: interrupted{kept}", file=sys.stderr)
        return 130
    if args.out:
        _write_json(result, Path(args.out))
    print(json.dumps(result, indent=2) if args.json else report.table(result))
    if args.plot:
        from random_ltd.bench import plots

        if plots.draw(result, Path(args.plot)):
            print(f"figure: {args.plot}", file=sys.stderr)
        else:
            print("no figure: none of the stack, train or run sections ran", file=sys.stderr)
    return 0


def _write_json(result: dict, path: Path) -> None:
    """Whole or not at all: an interrupted write leaves the previous file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(path)


def _check_plotting(path: str) -> None:
    """Before minutes of measuring: matplotlib present and the figure's folder there."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot: needs matplotlib (pip install 'random-ltd[plot]')") from None
    _check_folder("--plot", path)


def _check_folder(flag: str, path: str) -> None:
    if not Path(path).parent.is_dir():
        raise UsageError(f"{flag}: folder {Path(path).parent} does not exist")
