"""A finished study's numbers: per-arm mean ± std, each claim's verdict, a table and a plot."""
from __future__ import annotations

import math
from pathlib import Path

from random_ltd.ablate import verdict
from random_ltd.ablate.studies import Claim, Study

METRICS = ("final_val_loss", "final_val_accuracy", "overfit_rise", "layer_tokens", "flops", "wall_clock_s", "cpu_s")
_RECORDED = ("final_val_loss", "final_val_accuracy", "layer_tokens", "flops", "wall_clock_s", "cpu_s")


def overfit_rise(result: dict) -> float:
    """How far the final validation loss sits above the lowest one seen during training."""
    losses = [point[2] for point in result["curve"]]
    return losses[-1] - min(losses)


def per_seed(results: list[dict]) -> dict[str, list[float]]:
    """Each metric's per-seed values; a metric some seed lacks (accuracy of a text task) is left out."""
    values = {name: [float(r[name]) for r in results] for name in _RECORDED if all(name in r for r in results)}
    values["overfit_rise"] = [overfit_rise(r) for r in results]
    return values


def summarize_arms(results: dict[str, list[dict]]) -> dict[str, dict]:
    """``{label: {"seeds": [...], metric: [per-seed values], metric_mean, metric_std, "curve_mean": ...}}``."""
    summary = {}
    for label, runs in results.items():
        values = per_seed(runs)
        entry = {"seeds": [r["seed"] for r in runs], "steps": runs[0]["steps"], **values,
                 "load_average": load_range(runs),
                 "curve_mean": mean_curve(runs)}
        for name in METRICS:
            if name in values:
                entry[f"{name}_mean"], entry[f"{name}_std"] = verdict.mean_std(values[name])
        summary[label] = entry
    return summary


def load_range(runs: list[dict]) -> list[float]:
    """Lowest and highest 1-minute load average seen at the start or end of a seed ([] if unknown)."""
    seen = [value for r in runs for value in r.get("load_average") or [] if value is not None]
    return [min(seen), max(seen)] if seen else []


def mean_curve(runs: list[dict]) -> list[list[float]]:
    """Validation curve averaged over seeds (``[step, layer_tokens, val_loss, flops]``, ``runs.with_curve``)
    at the common steps."""
    length = min(len(r["curve"]) for r in runs)
    return [[runs[0]["curve"][i][0], *(sum(r["curve"][i][k] for r in runs) / len(runs) for k in (1, 2, 3))]
            for i in range(length)]


def judge_claim(claim: Claim, arms: dict[str, dict], tolerance: float = verdict.DEFAULT_TOLERANCE) -> dict:
    a = verdict.per_seed_mean([arms[label][claim.metric] for label in claim.a])
    b = verdict.per_seed_mean([arms[label][claim.metric] for label in claim.b])
    reference = verdict.per_seed_mean([arms[label][claim.tolerance_metric] for label in claim.b])
    absolute_tolerance = tolerance * abs(sum(reference) / len(reference))
    interval = verdict.paired_interval(a, b)
    # higher is better: the rules read B − A, so "A better" is a negative number either way
    judged = verdict.paired_interval(b, a) if claim.higher_is_better else interval
    outcome, note = verdict.judge(claim.kind, judged, absolute_tolerance), ""
    if claim.needs_overfitting:
        rise = sum(verdict.per_seed_mean([arms[label]["overfit_rise"] for label in claim.b])) / len(b)
        if rise <= absolute_tolerance:
            outcome = verdict.INCONCLUSIVE
            note = f"precondition not met: B's validation loss rose only {rise:.4f} above its minimum"
    return {"section": claim.section, "claim": claim.text, "kind": claim.kind, "metric": claim.metric,
            "a": list(claim.a), "b": list(claim.b), "difference": interval.difference,
            "half_width": interval.half_width, "tolerance": absolute_tolerance, "seeds": interval.count,
            "higher_is_better": claim.higher_is_better, "verdict": outcome, "note": note}


def fmt(mean: float, std: float, digits: int = 4) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


CPU_NOTE = ("CPU time: process CPU seconds per seed of one single-threaded process, summed over the training "
            "steps (every method trains on the same loop). The ratio is to the first arm's.")


def arms_table(arms: dict[str, dict], flops: bool = False) -> str:
    """One row per arm. The time shown is CPU time (see ``CPU_NOTE``), not wall-clock: parallel arms
    run under different load, and wall-clock would compare the load rather than the arms. ``flops``:
    a column of training FLOPs (the estimate ``random-ltd train`` counts) and their ratio to the baseline's."""
    reference = next((arm for label, arm in arms.items() if label.startswith(("baseline", "plain"))), None)
    first = next(iter(arms.values()))
    accuracy = all("final_val_accuracy_mean" in arm for arm in arms.values())
    lines = ["| arm | steps | layer-tokens | saving | " + ("training FLOPs | FLOPs vs baseline | " if flops else "")
             + "val loss (mean ± std) | val perplexity | "
             + ("val accuracy (mean ± std) | " if accuracy else "") + "overfit rise | CPU s/seed | CPU vs first |",
             "|---|---:|---:|---:|" + ("---:|---:|" if flops else "") + "---:|---:|" + ("---:|" if accuracy else "")
             + "---:|---:|---:|"]
    for label, arm in arms.items():
        saving = "—" if reference is None else \
            f"{100 * (1 - arm['layer_tokens_mean'] / reference['layer_tokens_mean']):.1f}%"
        score = f"{fmt(arm['final_val_accuracy_mean'], arm['final_val_accuracy_std'])} | " if accuracy else ""
        cost = f"{arm['flops_mean']:.4g} | {flops_ratio(arm, reference)} | " if flops else ""
        lines.append(f"| {label} | {arm['steps']} | {arm['layer_tokens_mean']:.4g} | {saving} | {cost}"
                     f"{fmt(arm['final_val_loss_mean'], arm['final_val_loss_std'])} | "
                     f"{math.exp(min(arm['final_val_loss_mean'], 50)):.2f} | {score}"
                     f"{fmt(arm['overfit_rise_mean'], arm['overfit_rise_std'])} | {cpu_cell(arm)} | "
                     f"{cpu_ratio(arm, first)} |")
    return "\n".join(lines)


def flops_ratio(arm: dict, reference: dict | None) -> str:
    if reference is None or not reference.get("flops_mean"):
        return "—"
    return f"{arm['flops_mean'] / reference['flops_mean']:.3f}"


def cpu_cell(arm: dict) -> str:
    if "cpu_s_mean" not in arm:
        return "—"
    return f"{arm['cpu_s_mean']:.1f}"


def cpu_ratio(arm: dict, first: dict) -> str:
    if "cpu_s_mean" not in arm or "cpu_s_mean" not in first:
        return "—"
    return f"{arm['cpu_s_mean'] / first['cpu_s_mean']:.2f}"


def claims_table(judged: list[dict]) -> str:
    lines = ["| § | claim (A vs B) | metric | A − B (95% CI) | tolerance | verdict |", "|---|---|---|---:|---:|---|"]
    for item in judged:
        metric = item["metric"] + (" (higher is better)" if item.get("higher_is_better") else "")
        interval = ("n/a (1 seed)" if math.isinf(item["half_width"])
                    else f"{item['difference']:+.4f} ± {item['half_width']:.4f}")
        note = f" ({item['note']})" if item.get("note") else ""
        lines.append(f"| {item['section']} | {item['claim']} | {metric} | {interval} | "
                     f"{item['tolerance']:.4f} | **{item['verdict']}**{note} |")
    return "\n".join(lines)


def study_markdown(study: Study, arms: dict[str, dict], judged: list[dict], command: str, context: str) -> str:
    """The study's section: setup, command, arms table, claims with verdicts."""
    return "\n".join([
        f"## {study.section} {study.title} (`{study.name}`)", "",
        study.setup, "", context, "", "```bash", command, "```", "",
        arms_table(arms, flops=study.budget == "flops"), "", CPU_NOTE, "", claims_table(judged), "",
    ])


def plot(path: Path, study: Study, arms: dict[str, dict]) -> None:
    """Left: mean validation curves against the study's budget (layer-tokens, or training FLOPs);
    right: final loss per arm (mean ± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, bars) = plt.subplots(1, 2, figsize=(13, 4.8))
    by_flops = study.budget == "flops"
    for number, (label, arm) in enumerate(arms.items()):
        points = arm["curve_mean"]
        curves.plot([p[3 if by_flops else 1] for p in points], [p[2] for p in points], label=label, linewidth=1.2,
                    color=plt.cm.tab20(number % 20), linestyle="-" if number < 10 else "--")
    curves.set(xlabel="training FLOPs (estimate)" if by_flops else "layer-tokens",
               ylabel="validation loss (mean over seeds)", title=study.title)
    curves.legend(fontsize=7)
    labels = list(arms)
    bars.bar(range(len(labels)), [arms[k]["final_val_loss_mean"] for k in labels],
             yerr=[arms[k]["final_val_loss_std"] for k in labels], capsize=3, color="tab:blue", alpha=0.7)
    lowest = min(arms[k]["final_val_loss_mean"] - arms[k]["final_val_loss_std"] for k in labels)
    highest = max(arms[k]["final_val_loss_mean"] + arms[k]["final_val_loss_std"] for k in labels)
    margin = max(highest - lowest, 1e-3) * 0.3
    bars.set_ylim(lowest - margin, highest + margin)
    bars.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
    bars.set(ylabel="final validation loss (mean ± std)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
