"""What a finished run leaves behind: summary.json, report.md and the plots.

Per arm the summary holds the mean over seeds of each result (and ``<name>_std`` with more than
one seed), the per-seed results, and the savings of random-LTD against the baseline. With the arms
stepped in lockstep the wall-clock saving is the paired estimate of ``timing.py`` with its
interval; run one after the other, it compares summed times taken under whatever load each met.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from random_ltd.train import plots, timing
from random_ltd.train.config import TrainConfig
from random_ltd.train.tasks import dit

NUMERIC_RESULTS = ("steps", "tokens", "layer_tokens", "flops", "wall_clock_s", "cpu_s", "eval_s", "final_val_loss",
                   "final_val_perplexity", "final_val_accuracy", "final_fid_proxy", "final_fid_proxy_real")


def write_json(path: Path, value: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)


def write(root: Path, config: TrainConfig, plans: dict, results: dict, data: dict, command: str | None,
          device: str = "cpu", world_size: int = 1, lockstep: bool = False) -> dict:
    summary = summarize(config, plans, results, data, command, lockstep)
    summary["environment"]["device"] = device
    summary["world_size"] = world_size
    summary["out"] = str(root)  # the run folder, also when --out was not given
    write_json(root / "summary.json", summary)
    figures = plots.draw(root, config, list(plans))
    (root / "report.md").write_text(markdown(summary, figures))
    return summary


def summarize(config: TrainConfig, plans: dict, results: dict, data: dict, command: str | None,
              lockstep: bool = False) -> dict:
    seeds = range(config.seed, config.seed + config.seeds)
    arms = {}
    for arm, plan in plans.items():
        runs = [with_perplexity({k: v for k, v in results[(arm, seed)].items() if k != "step_s"}) for seed in seeds]
        arms[arm] = {**aggregate(runs), "drop_layers": list(plan.drop_layers), "lr_clock": plan.lr_clock,
                     "schedule": None if plan.schedule is None else plan.schedule.state_dict(), "seeds": runs}
    comparison = compare(arms)
    # a run resumed from results written before step times were kept has nothing to pair
    lockstep = lockstep and all(run.get("step_s") for run in results.values())
    if lockstep and comparison:
        comparison.update(paired_wall_clock(plans["random_ltd"], [results[("random_ltd", s)] for s in seeds],
                                            [results[("baseline", s)] for s in seeds]))
    return {
        "task": config.task, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command,
        "world_size": 1, "arm_order": "lockstep" if lockstep else "sequential", "arms": arms,
        "comparison": comparison, "config": config.to_dict(), "data": data,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
    }


def with_perplexity(result: dict) -> dict:
    if "final_val_loss" in result and "final_val_accuracy" not in result and "final_fid_proxy" not in result:
        return {**result, "final_val_perplexity": math.exp(min(result["final_val_loss"], 50.0))}
    return result


def aggregate(runs: list[dict]) -> dict:
    """Mean over seeds of every numeric result; ``<name>_std`` (sample std) with several seeds."""
    summary = {}
    for name in NUMERIC_RESULTS:
        values = [run[name] for run in runs if name in run]
        if not values:
            continue
        mean = statistics.fmean(values)
        summary[name] = int(round(mean)) if isinstance(values[0], int) and len(values) == 1 else mean
        if len(values) > 1:
            summary[f"{name}_std"] = statistics.stdev(values)
    return summary


def compare(arms: dict) -> dict:
    if "baseline" not in arms or "random_ltd" not in arms:
        return {}
    base, ltd = arms["baseline"], arms["random_ltd"]
    comparison = {f"{name}_saving": 1.0 - ltd[name] / base[name]
                  for name in ("layer_tokens", "flops", "wall_clock_s", "cpu_s") if base.get(name)}
    comparison["val_loss_difference"] = ltd["final_val_loss"] - base["final_val_loss"]
    if "final_val_accuracy" in base:
        comparison["val_accuracy_difference"] = ltd["final_val_accuracy"] - base["final_val_accuracy"]
    return comparison


def paired_wall_clock(plan, ltd_runs: list[dict], baseline_runs: list[dict]) -> dict:
    """The wall-clock saving of arms stepped in lockstep: paired per round (``timing.py``); the
    saving of summed times is kept beside it as ``wall_clock_s_saving_summed``."""
    rounds = [timing.Rounds(tuple(ltd["step_s"]), tuple(base["step_s"]),
                            tuple(plan.schedule(step) for step in range(len(ltd["step_s"]))))
              for ltd, base in zip(ltd_runs, baseline_runs, strict=True)]
    paired = timing.estimate(rounds)
    summed = 1 - sum(sum(r.times) for r in rounds) / sum(sum(r.baseline_times) for r in rounds)
    return {"wall_clock_s_saving": paired["saving"], "wall_clock_s_saving_interval": paired["interval"],
            "wall_clock_rounds": paired["rounds"], "wall_clock_s_saving_summed": summed}


def _cell(arm: dict, name: str, fmt: str) -> str:
    if name not in arm:
        return "—"
    text = format(arm[name], fmt)
    return f"{text} ± {format(arm[name + '_std'], fmt)}" if f"{name}_std" in arm else text


def table(summary: dict) -> str:
    """The Markdown table of the report (also what the README's results section shows)."""
    quality = {"vit": ("final_val_accuracy", "val accuracy", ".4f"),
               "dit": ("final_fid_proxy", "FID (classifier proxy)", ".2f")}.get(
        summary["task"], ("final_val_perplexity", "val perplexity", ".2f"))
    lines = ["| arm | steps | layer-tokens | saving | FLOPs (est.) | wall-clock (s) | CPU (s) | val loss | "
             + quality[1] + " |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = summary["arms"].get("baseline")
    for name, arm in summary["arms"].items():
        saving = (f"{100 * (1 - arm['layer_tokens'] / base['layer_tokens']):.1f}%"
                  if base and name != "baseline" else "—")
        cells = [name, str(arm["steps"]), f"{arm['layer_tokens']:.4g}", saving, f"{arm['flops']:.3g}",
                 _cell(arm, "wall_clock_s", ".1f"), _cell(arm, "cpu_s", ".1f"), _cell(arm, "final_val_loss", ".4f"),
                 _cell(arm, quality[0], quality[2])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(summary: dict, figures: list[str]) -> str:
    config, data = summary["config"], summary["data"]
    seeds = config["seeds"]
    parts = [
        f"# random-ltd train: {summary['task']}", "",
        f"Run {summary['date']}; {seeds} seed{'s' if seeds > 1 else ''}"
        + (" (mean ± std)" if seeds > 1 else "") + f"; torch {summary['environment']['torch']}, "
        f"{summary['environment']['threads']} threads, device {summary['environment']['device']}.", "",
        "```bash", summary["command"] or "(run through the Python API: random_ltd.train.run_training)", "```", "",
        table(summary), "",
        "Layer-tokens: tokens processed summed over layers. Wall-clock and CPU time (all threads of the process): "
        "training steps only, evaluation and checkpoints excluded. "
        "Validation runs at full length, without dropping.", "",
    ]
    parts += comparison_lines(summary) + _schedule_lines(summary) + _load_lines(summary)
    parts += dit.report_lines(summary) if summary["task"] == "dit" else []
    parts += [f"Data: {json.dumps(data)}", ""]
    parts += [f"![{figure}]({figure})" for figure in figures]
    return "\n".join(parts) + "\n"


def comparison_lines(summary: dict) -> list[str]:
    comparison = summary["comparison"]
    if not comparison:
        return []
    labels = {"layer_tokens_saving": "layer-token saving", "flops_saving": "FLOP saving (estimate)",
              "wall_clock_s_saving": "wall-clock saving", "cpu_s_saving": "CPU-time saving"}
    words = [f"{labels[name]} {100 * value:.1f}%" + _wall_clock_note(summary, name)
             for name, value in comparison.items() if name in labels]
    words.append(f"val loss difference (random-LTD − baseline) {comparison['val_loss_difference']:+.4f}")
    if "val_accuracy_difference" in comparison:
        words.append(f"accuracy difference {100 * comparison['val_accuracy_difference']:+.2f} points")
    return ["Random-LTD against the baseline: " + "; ".join(words) + ".", ""]


def _wall_clock_note(summary: dict, name: str) -> str:
    """How the wall-clock saving was measured, said next to it: it is the figure people quote."""
    if name != "wall_clock_s_saving":
        return ""
    comparison = summary["comparison"]
    if "wall_clock_s_saving_interval" in comparison:
        low, high = comparison["wall_clock_s_saving_interval"]
        return (f" (arms stepped in lockstep, paired over {comparison['wall_clock_rounds']} rounds: 95% interval "
                f"{100 * low:.1f}% to {100 * high:.1f}%)")
    return (" (arms run one after the other: this figure depends on the machine's load while each ran; "
            "lockstep, the default where the arms fit in memory, pairs their steps instead)")


def _load_lines(summary: dict) -> list[str]:
    loads = [f"{name} (seed {run['seed']}) {run['load_average'][0]} → {run['load_average'][1]}"
             for name, arm in summary["arms"].items() for run in arm["seeds"] if run.get("load_average")]
    if not loads:
        return []
    if summary.get("arm_order") == "lockstep":
        caveat = ("The paired saving cancels load that changes more slowly than a round; the table's summed "
                  "wall-clock times do not.")
    else:
        caveat = "The arms ran one after the other: their wall-clock times compare only on an otherwise idle machine."
    return [f"Machine load (1-minute average) when each arm started → ended: {'; '.join(loads)}. " + caveat, ""]


def _schedule_lines(summary: dict) -> list[str]:
    ltd = summary["arms"].get("random_ltd")
    if not ltd:
        return []
    settings = {k: v for k, v in (ltd["schedule"] or {}).items() if v is not None}
    return [f"Random-LTD: layers {ltd['drop_layers']} drop tokens; schedule {settings}; "
            f"LR clock: {ltd['lr_clock']}.", ""]

