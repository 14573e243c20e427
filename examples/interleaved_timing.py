"""Time the two arms of ``random-ltd train`` step by step, interleaved.

``random-ltd train`` trains the baseline and then the random-LTD arm, so on a machine whose
speed drifts their wall-clock times are minutes apart. This script builds both arms exactly as
the training program does (``build_arm``) and runs their ``train_step`` alternately, in a random
order per step, so each step's two times are seconds apart. It prints the saving from summed
times and the paired estimate of ``random-ltd bench`` (per-step ratio, median per kept length).
No evaluation, checkpoints or files: only the timed training steps.

    python examples/interleaved_timing.py --task vit
    python examples/interleaved_timing.py --task gpt --steps 150 --threads 1
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from random_ltd.bench.sections import paired_saving
from random_ltd.train.arms import plan_arms, step_flops
from random_ltd.train.config import TrainConfig
from random_ltd.train.program import build_arm, fresh_state, train_step
from random_ltd.train.tasks import make_task, resolve_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="gpt", choices=("gpt", "bert", "vit", "finetune"))
    parser.add_argument("--steps", type=int, help="steps to time (default: the whole run)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="the task's tiny --quick settings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = resolve_config(TrainConfig(task=args.task, quick=args.quick, seed=args.seed, progress=False))
    task = make_task(config)
    task.prepare()
    shape = task.shape()
    device = torch.device("cpu")
    arms = {}
    for name, plan in plan_arms(config, shape).items():
        model, optimizer, driver = build_arm(config, task, shape, plan, args.seed, device)
        arms[name] = (plan, model, optimizer, driver, fresh_state())
    run_steps = min(arm[0].steps for arm in arms.values())
    steps = min(args.steps or run_steps, run_steps)

    times: dict[str, list[float]] = {name: [] for name in arms}
    kept, shuffler = [], random.Random(args.seed)
    for _ in range(steps):
        order = list(arms)
        shuffler.shuffle(order)
        for name in order:
            plan, model, optimizer, driver, state = arms[name]
            started = time.perf_counter()
            record = train_step(config, task, shape, plan, args.seed, model, optimizer, driver, state, device)
            times[name].append(time.perf_counter() - started)
            if name == "random_ltd":
                kept.append(record["kept"])

    ltd_plan = arms["random_ltd"][0]
    flop_saving = 1 - sum(step_flops(config, shape, ltd_plan, k) for k in kept) / (
        steps * step_flops(config, shape, arms["baseline"][0], shape.seq_len))
    summed = 1 - sum(times["random_ltd"]) / sum(times["baseline"])
    paired = paired_saving(times["random_ltd"], times["baseline"], kept)
    print(f"{args.task}: {steps} steps interleaved, kept {kept[0]} -> {kept[-1]}; "
          f"baseline {sum(times['baseline']):.1f} s, random-LTD {sum(times['random_ltd']):.1f} s wall-clock")
    print(f"saving: summed {summed:+.1%}, paired {paired:+.1%}; FLOP saving {flop_saving:+.1%}; "
          f"paired / FLOP {paired / flop_saving:.3f}")


if __name__ == "__main__":
    main()
