"""``random-ltd bench --plot FILE``: the saving against its physical limit, in one figure.

Panels, for the sections that ran:

- each layer stack: time of (b) random-LTD and (c) the ideal as a fraction of (a), against the
  kept fraction; the gap between the two curves is the overhead;
- the training step: measured saving of random-LTD and the ideal against the FLOP saving
  (the diagonal is "the clock saves what the FLOP count says");
- the whole run: per-step time over the same step's baseline time for random-LTD and the
  ideal, and the FLOP ratio of the step, against the step.
"""
from __future__ import annotations

from pathlib import Path

COLOURS = {"ltd": "tab:orange", "ideal": "tab:green", "flops": "tab:gray"}


def draw(result: dict, path: Path) -> bool:
    """Write the figure; ``False`` (nothing written) without matplotlib or without a plottable section."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    clock = result["settings"]["clock"]
    panels = [(_stack_panel, stack) for stack in result.get("stack", [])]
    if "train_step" in result:
        panels.append((_train_panel, result["train_step"]))
    if "whole_run" in result:
        panels.append((_run_panel, result["whole_run"]))
    if not panels:
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for axis, (panel, section) in zip(axes[0], panels, strict=True):
        panel(axis, section, clock)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"random-ltd bench, {result['date']} ({result['machine']['device']}, {clock} clock)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _min(timing: dict, clock: str) -> float:
    return timing["min_s"] if clock == "wall" else timing["cpu_min_s"]


def _stack_panel(axis, stack: dict, clock: str) -> None:
    shape = stack["shape"]
    full = _min(stack["full"], clock)
    fractions = [row["keep"] / shape["seq_len"] for row in stack["keeps"]]
    for variant, label in (("ltd", "(b) random-LTD"), ("ideal", "(c) ideal")):
        axis.plot(fractions, [_min(row[variant], clock) / full for row in stack["keeps"]], marker="o",
                  color=COLOURS[variant], label=label)
    axis.set_xlabel("kept fraction k / s")
    axis.set_ylabel("time / full stack (a), minima")
    axis.set_title(f"stack {shape['name']} (d={shape['hidden']}, s={shape['seq_len']})", fontsize=9)


def _train_panel(axis, train: dict, clock: str) -> None:
    rows = train["keeps"]
    flop = [row["flop_saving"] for row in rows]
    axis.plot(flop, [row["saving"] for row in rows], marker="o", color=COLOURS["ltd"], label="random-LTD")
    axis.plot(flop, [row["ideal_saving"] for row in rows], marker="o", color=COLOURS["ideal"], label="ideal")
    axis.plot([0, max(flop)], [0, max(flop)], linestyle="--", color=COLOURS["flops"], label="= FLOP saving")
    for row in rows:
        axis.annotate(f"k={row['keep']}", (row["flop_saving"], row["saving"]), fontsize=7,
                      textcoords="offset points", xytext=(4, -10))
    axis.set_xlabel("FLOP saving per step")
    axis.set_ylabel("measured saving per step (minima)")
    axis.set_title("gpt training step", fontsize=9)


def _run_panel(axis, run: dict, clock: str) -> None:
    times = run["step_times_s"] if clock == "wall" else run["step_cpu_times_s"]
    steps = range(len(run["step_kept"]))
    for arm, variant, label in (("random_ltd", "ltd", "random-LTD"), ("ideal", "ideal", "ideal")):
        ratios = [mine / base for mine, base in zip(times[arm], times["baseline"], strict=True)]
        axis.plot(steps, ratios, linestyle="none", marker=".", markersize=3, color=COLOURS[variant], label=label)
    flop_ratios = [1 - saving for saving in run["step_flop_saving"]]
    axis.plot(steps, flop_ratios, color=COLOURS["flops"], label="FLOPs / baseline FLOPs")
    axis.set_xlabel("step")
    axis.set_ylabel("step time / same step's baseline time")
    ratio = run["realised_over_flop_saving_paired"]
    axis.set_title("whole run" + ("" if ratio is None else f": realised/FLOP {ratio:.2f} (paired)"), fontsize=9)
