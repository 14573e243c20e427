"""Does ``random-ltd train``'s wall-clock saving survive a busy machine?

For each arm order, train the same run twice: once as the machine is, once with a busy loop
(``python -c 'while True: pass'``, one core) started part-way through and stopped at the end.
Prints, per order, the reported wall-clock saving of both runs and their difference in points;
lockstep's figure is the paired estimate (with its 95% interval), sequential's the saving of
summed times. The target: lockstep's two figures within 5 points. The load average before each
run is printed too: on a shared machine "as the machine is" is not idle.

    python examples/busy_machine.py --quick --steps 300
    python examples/busy_machine.py --quick --steps 300 --orders lockstep --busy-from 0.5
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from random_ltd.train import TrainConfig, run_training

BUSY_LOOP = [sys.executable, "-c", "while True: pass"]


class BusyLoop:
    """Starts the busy loop when the run has done ``start_at`` steps (all arms together)."""

    def __init__(self, start_at: int):
        self.start_at = start_at
        self.done = 0
        self.process: subprocess.Popen | None = None

    def on_step(self, arm: str, seed: int, step: int) -> None:
        self.done += 1
        if self.done == self.start_at and self.process is None:
            self.process = subprocess.Popen(BUSY_LOOP)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


def train(config: TrainConfig, busy_from: float | None) -> dict:
    """The run's summary; with ``busy_from``, a busy loop runs from that fraction of its steps on."""
    with tempfile.TemporaryDirectory() as folder:
        config = config.replace(out=f"{folder}/run")
        if busy_from is None:
            return run_training(config)
        busy = BusyLoop(start_at=max(1, round(busy_from * 2 * config.steps)))  # both arms' steps
        try:
            return run_training(config, on_step=busy.on_step)
        finally:
            busy.stop()


def describe(summary: dict) -> str:
    comparison = summary["comparison"]
    text = f"{100 * comparison['wall_clock_s_saving']:.1f}%"
    if "wall_clock_s_saving_interval" in comparison:
        low, high = comparison["wall_clock_s_saving_interval"]
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="gpt", choices=("gpt", "bert", "vit"))
    parser.add_argument("--quick", action="store_true", help="the task's tiny --quick settings")
    parser.add_argument("--steps", type=int, default=300, help="baseline steps (default 300)")
    parser.add_argument("--model-size", choices=("tiny", "small", "base"))
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--busy-from", type=float, default=0.3, help="fraction of the run's steps before the busy "
                                                                      "loop starts (default 0.3)")
    parser.add_argument("--orders", default="lockstep,sequential", help="arm orders to try, comma-separated")
    args = parser.parse_args()

    config = TrainConfig(task=args.task, quick=args.quick, steps=args.steps, model_size=args.model_size,
                         seq_len=args.seq_len, eval_every=args.steps, progress=False)
    print(f"{os.cpu_count()} cores; settings: task={args.task} quick={args.quick} steps={args.steps} "
          f"model_size={args.model_size} seq_len={args.seq_len}; busy loop from {args.busy_from:.0%} of the steps")
    print("| arm order | load before (1 min) | saving, as the machine is | load before (1 min) | saving, busy loop "
          "part-way | difference (points) | FLOP saving |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for order in args.orders.split(","):
        ordered = config.replace(arm_order=order)
        load_quiet = os.getloadavg()[0]
        quiet = train(ordered, None)
        load_busy = os.getloadavg()[0]
        busy = train(ordered, args.busy_from)
        difference = 100 * (busy["comparison"]["wall_clock_s_saving"] - quiet["comparison"]["wall_clock_s_saving"])
        print(f"| {order} | {load_quiet:.1f} | {describe(quiet)} | {load_busy:.1f} | {describe(busy)} | "
              f"{difference:+.1f} | {100 * quiet['comparison']['flops_saving']:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
