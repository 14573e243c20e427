"""The markdown page of a ``scripts/gpu-check`` result, and its verdicts on the issue's three GPU targets."""
from __future__ import annotations

from random_ltd.bench.report import OVERHEAD_LIMIT, WHOLE_RUN_RATIO

GIB = 1024**3


def targets(result: dict) -> dict:
    """Overhead against the ideal <= 3% at d >= 1024; realised / FLOP saving >= 0.9 over the MSLG run;
    no host sync in a dropping layer. ``None`` where nothing measured it."""
    stacks = [step["result"] for step in _finished(result, "stack ")]
    overheads = [row["overhead_median"] for stack in stacks if stack["shape"]["hidden"] >= 1024
                 for row in stack["keeps"]]
    run = next((step["result"] for step in result["steps"] if step["name"] == "mslg run" and step["status"] == "ok"),
               None)
    ratio = run["realised_over_flop_saving_paired"] if run else None
    checks = [stack["host_syncs"]["sync_free"] for stack in stacks if stack["host_syncs"].get("checked")]
    return {
        "overhead_limit": OVERHEAD_LIMIT, "overhead_max": max(overheads, default=None),
        "overhead_met": None if not overheads else max(overheads) <= OVERHEAD_LIMIT,
        "whole_run_limit": WHOLE_RUN_RATIO, "whole_run_ratio": ratio,
        "whole_run_met": None if ratio is None else ratio >= WHOLE_RUN_RATIO,
        "sync_free_stacks": sum(checks), "sync_checked_stacks": len(checks),
        "sync_free_met": None if not checks else all(checks),
    }


def _finished(result: dict, prefix: str) -> list[dict]:
    return [step for step in result["steps"] if step["name"].startswith(prefix) and step["status"] == "ok"]


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.2f}"


def _gib(count) -> str:
    return "-" if count is None else f"{count / GIB:.2f}"


def _verdict(met) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


def markdown(result: dict) -> str:
    env = result.get("environment", {})
    dry = " (DRY RUN: tiny shapes on the CPU, the figures mean nothing)" if result["dry_run"] else ""
    lines = [f"# gpu-check{dry}",
             "", f"{result['date']}; {env.get('device_name', '?')}; torch {env.get('torch', '?')}, transformers "
             f"{env.get('transformers', '?')}; {'complete' if result['complete'] else 'INCOMPLETE'} "
             f"after {result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget.", "",
             "| step | status | seconds | note |", "|---|---|---|---|"]
    for step in result["steps"]:
        lines.append(f"| {step['name']} | {step['status']} | {step.get('seconds', 0):.1f} | {step.get('note', '')} |")
    lines += ["", "## Targets", ""]
    verdicts = targets(result)
    ratio = verdicts["whole_run_ratio"]
    lines += [f"- overhead against the ideal <= {OVERHEAD_LIMIT:.0%} of a full step at d >= 1024: "
              f"{_verdict(verdicts['overhead_met'])} (max {_pct(verdicts['overhead_max'])})",
              f"- realised / FLOP saving >= {WHOLE_RUN_RATIO} over an MSLG run: {_verdict(verdicts['whole_run_met'])} "
              f"({'-' if ratio is None else f'{ratio:.3f}'})",
              f"- no host sync in a dropping layer (set_sync_debug_mode('error')): "
              f"{_verdict(verdicts['sync_free_met'])} "
              f"({verdicts['sync_free_stacks']}/{verdicts['sync_checked_stacks']} stacks)"]
    lines += _stack_table(result) + _run_lines(result) + _mask_lines(result) + _test_lines(result)
    return "\n".join(lines) + "\n"


def _stack_table(result: dict) -> list[str]:
    lines = ["", "## Layer stacks (training step: forward + backward)", "",
             "overhead = (random-LTD - ideal) / full; realised = (full - random-LTD) / (full - ideal); saving / FLOP = "
             "wall-clock saving over FLOP saving; medians over interleaved rounds. Masks: random-LTD's "
             "create_block_mask calls per step (kept length) and their time.", "",
             "| stack | kept | full ms | random-LTD ms | ideal ms | overhead | realised | saving / FLOP | "
             "peak GiB full / LTD / ideal | masks per step (ms) | sync-free |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for step in result["steps"]:
        if not step["name"].startswith("stack ") or step["status"] != "ok":
            continue
        stack = step["result"]
        masks = stack["mask_builds"]
        mask_cell = "in graph" if masks is None else f"{masks['kept_count']} ({_ms(masks['kept_seconds'])})"
        syncs = stack["host_syncs"]
        sync_free = "-" if not syncs.get("checked") else ("yes" if syncs["sync_free"] else "NO")
        for row in stack["keeps"]:
            peaks = f"{_gib(stack['full_peak_bytes'])} / {_gib(row['peak_bytes']['ltd'])} / " \
                    f"{_gib(row['peak_bytes']['ideal'])}"
            lines.append(f"| {step['name'][6:]} | {row['keep']} | {_ms(stack['full']['median_s'])} | "
                         f"{_ms(row['ltd']['median_s'])} | {_ms(row['ideal']['median_s'])} | "
                         f"{_pct(row['overhead_median'])} | {_pct(row['realised_fraction_median'])} | "
                         f"{row['saving_over_flop_saving']:.2f} | {peaks} | {mask_cell} | {sync_free} |")
    return lines


def _run_lines(result: dict) -> list[str]:
    run = next((step["result"] for step in result["steps"] if step["name"] == "mslg run" and step["status"] == "ok"),
               None)
    if run is None:
        return []
    return ["", "## MSLG run (GPT-2 language model, AdamW)", "",
            f"{run['schedule']['steps']} steps, kept {run['schedule']['start']} +{run['schedule']['increment']} to "
            f"{run['schedule']['seq_len']} at {run['schedule']['full_at']:.0%} of the run: FLOP saving "
            f"{_pct(run['flop_saving'])}, realised saving {_pct(run['realised_saving_paired'])} (paired), "
            f"realised / FLOP saving {run['realised_over_flop_saving_paired']:.3f}; the ideal's "
            f"{run['ideal_over_flop_saving_paired']:.3f}."]


def _mask_lines(result: dict) -> list[str]:
    """The flex mask cost rows, whatever their columns (``random_ltd.bench.flex_masks``)."""
    masks = next((step["result"] for step in _finished(result, "flex masks")), None)
    if masks is not None and not masks.get("available"):
        return ["", "Flex kept masks: not measured (random_ltd.bench.flex_masks is not in this checkout)."]
    if not masks or not masks.get("rows"):
        return []
    columns = list(masks["rows"][0])
    lines = ["", f"## Flex kept masks per forward ({masks.get('layers')} dropping layers, ms)", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in masks["rows"]:
        lines.append("| " + " | ".join("-" if row[c] is None else f"{row[c]:.3g}" if isinstance(row[c], float)
                                       else str(row[c]) for c in columns) + " |")
    return lines


def _test_lines(result: dict) -> list[str]:
    tests = next((step for step in result["steps"] if step["name"] == "cuda tests"), None)
    if tests is None or tests["status"] != "ok":
        return []
    summary = tests["result"]
    lines = ["", "## CUDA tests", "", f"`{summary['command']}`: {summary['counts']}", ""]
    lines += [f"- {problem}" for problem in summary.get("problems", [])]
    lines += [f"- {note}" for note in summary.get("notes", [])]
    return lines
