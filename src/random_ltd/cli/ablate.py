"""``random-ltd ablate NAME``: the paper's claims, run with several seeds, judged on a results page."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from random_ltd.cli import UsageError
from random_ltd.errors import RandomLTDError

DESCRIPTION = """\
Run one of the paper's experiments (Section 4's headline results, Section 5's ablations) with
several seeds and judge its claims. Each study trains its arms with `random-ltd train`'s program
(TokenBypass and protected special tokens through its method hook, on the same training loop),
then writes OUT/NAME/: table.md (mean ± std per arm, each claim with its 95% interval and
verdict), plot.png and results.json, and updates the study's block of the results page. Arms
shared between studies are trained once (OUT/runs/); rerunning a command continues where it
stopped.
"""

EPILOG = """\
studies:
  gpt             4    GPT pretraining on 30% fewer layer-tokens vs the baseline at full budget
  bert            4    BERT masked LM at 28% fewer layer-tokens vs the baseline
  vit             4    ViT on Fashion-MNIST (197 tokens, kept from 66): accuracy vs the baseline
  finetune        4    finetuning pretrained SmolLM2-135M (30 layers, 64 tokens): random-LTD vs plain
  bypass          5.1  random-LTD vs TokenBypass on causal LM, the paper's two layer ranges
  special-tokens  5.2  random-LTD with and without always keeping [CLS]/[SEP] (BERT)
  layers          5.3  which layers drop; single-layer sensitivity sweep (U shape)
  schedule        5.4  MSLG vs a constant drop rate at the same layer-token saving
  lr              5.5  LayerToken LR vs iteration LR under random-LTD, and the baseline
  lr-small        5.5  the same with the small GPT-2
  budget          5.6  baseline at budgets B and 1.5B vs random-LTD on 2/3 of each (Table 7)
  budget-small    5.6  the same with the small GPT-2
  dropout         5.7  baseline and random-LTD with/without dropout on a small corpus
  dit             TREAD  diffusion transformer: TREAD vs the baseline and random-LTD (Fashion-MNIST)
  mod             MoD  Mixture-of-Depths vs random-LTD vs the baseline at equal training FLOPs
  all             every study in turn (about 1.5 h with --jobs 2 on 2 CPU cores: see docs/results.md)

Seeds per study are fixed in advance: 10 for Section 5, 5 for Section 4, the small reruns and mod,
3 for dit.

Verdicts: reproduced / not reproduced / inconclusive at this scale, from the per-seed
differences (rules at the top of the results page). Exit status 0, or 2 on bad input.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("ablate", help="the paper's ablations, with verdicts on a results page",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help="study name(s), or all")
    parser.add_argument("--list", action="store_true", help="list the studies and their claims, train nothing")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 seeds: the pipeline in seconds (CI)")
    parser.add_argument("--seeds", type=int, help="seeds per arm, for every study chosen (default: each study's own, "
                                                        "10 or 5; 2 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--out", metavar="DIR", help="study folders and trained arms (default runs/ablate[-quick])")
    parser.add_argument("--results", metavar="FILE",
                        help="results page to update (default docs/results.md; with --quick OUT/results.md)")
    parser.add_argument("--engine", choices=("program", "bare"),
                        help="train arms as random-ltd train runs, with a report per arm (default), or bare: the "
                             "same training loop and numbers without per-run reports (default with --quick)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process (default: torch's choice; "
                                                   "1 with --jobs)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="train arms in this many processes at once (default 1; 2 on a 2-core machine)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from random_ltd.ablate import STUDIES, run_study

    if args.list:
        print_studies(args.quick)
        return 0
    names = chosen_studies(args.names, STUDIES)
    options = make_options(args)
    threads = set_threads(args)
    started = time.perf_counter()
    try:
        if args.jobs > 1:
            from random_ltd.ablate.parallel import train_in_parallel

            train_in_parallel(names, options, args.jobs, threads or 1, log=log)
        for name in names:
            data = run_study(name, options, log=log)
            print(f"{name}: " + "; ".join(f"{item['claim']}: {item['verdict']}" for item in data["judged"]))
    except (ValueError, RandomLTDError) as error:
        raise UsageError(str(error)) from None
    print(f"results: {options.results}  ({(time.perf_counter() - started) / 60:.1f} min)")
    return 0


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def set_threads(args: argparse.Namespace) -> int | None:
    if args.jobs < 1:
        raise UsageError(f"--jobs: must be at least 1, got {args.jobs}")
    if args.threads is None:
        return None
    if args.threads < 1:
        raise UsageError(f"--threads: must be at least 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    return args.threads


def chosen_studies(names: list[str], studies: dict) -> list[str]:
    if not names:
        raise UsageError("NAME: give a study (" + ", ".join(studies) + ") or all")
    if names == ["all"]:
        return list(studies)
    unknown = [name for name in names if name not in studies]
    if unknown:
        raise UsageError(f"NAME: unknown study {unknown[0]!r}; choose from {', '.join(studies)} or all")
    return list(dict.fromkeys(names))


def make_options(args: argparse.Namespace):
    from random_ltd.ablate import Options

    root = Path(args.out or ("runs/ablate-quick" if args.quick else "runs/ablate"))
    results = Path(args.results) if args.results else (root / "results.md" if args.quick else Path("docs/results.md"))
    try:
        engine = args.engine or ("bare" if args.quick else "program")
        return Options(root=root, results=results, quick=args.quick, seeds=args.seeds, seed=args.seed,
                       device=args.device, engine=engine)
    except ValueError as error:
        raise UsageError(str(error)) from None


def print_studies(quick: bool) -> None:
    from random_ltd.ablate import STUDIES

    for name, study in STUDIES.items():
        arms, claims = study.build(quick)
        print(f"{name} ({study.section}, {study.title}): {len(arms)} arms")
        for claim in claims:
            print(f"  - {claim.text} [{claim.kind}, {claim.metric}]")
