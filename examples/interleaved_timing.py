"""Time the two arms of ``random-ltd train`` stepped in lockstep, and compare the two ways of
turning their step times into a wall-clock saving.

``random-ltd train`` steps the arms in lockstep by default (one step of each per round, in a
shuffled order, each with its own RNG state); this script runs it in a temporary folder with one
evaluation at the end and prints the saving from summed times beside the paired estimate of
the report (per-round ratios, median per kept length, 95% bootstrap interval) and the FLOP saving.

    python examples/interleaved_timing.py --task vit
    python examples/interleaved_timing.py --task gpt --steps 150 --threads 1
"""
from __future__ import annotations

import argparse
import tempfile

from random_ltd.train import TrainConfig, run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="gpt", choices=("gpt", "bert", "vit", "finetune"))
    parser.add_argument("--steps", type=int, help="baseline steps (default: the task's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="the task's tiny --quick settings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(task=args.task, quick=args.quick, steps=args.steps, threads=args.threads, seed=args.seed,
                             arm_order="lockstep", eval_every=10 ** 9, progress=False, out=f"{folder}/run")
        summary = run_training(config)
    base, ltd = summary["arms"]["baseline"], summary["arms"]["random_ltd"]
    comparison = summary["comparison"]
    low, high = comparison["wall_clock_s_saving_interval"]
    print(f"{args.task}: {comparison['wall_clock_rounds']} rounds in lockstep; baseline {base['wall_clock_s']:.1f} s, "
          f"random-LTD {ltd['wall_clock_s']:.1f} s wall-clock")
    summed, paired = comparison["wall_clock_s_saving_summed"], comparison["wall_clock_s_saving"]
    print(f"saving: summed {summed:+.1%}, paired {paired:+.1%} "
          f"(95% interval {low:+.1%} to {high:+.1%}); FLOP saving {comparison['flops_saving']:+.1%}")


if __name__ == "__main__":
    main()
