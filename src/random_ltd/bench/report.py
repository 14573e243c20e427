"""Machine description, target verdicts and the on-screen table of a bench result."""
from __future__ import annotations

import os
import platform

import torch

OVERHEAD_LIMIT = 0.03
WHOLE_RUN_RATIO = 0.9
MEMORY_CLOSE_TO_IDEAL = 1.10


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict:
    import transformers

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def conditions() -> dict:
    """How busy the machine is: 1-minute load average and CPU pressure (% of time some task waited)."""
    pressure = None
    try:
        with open("/proc/pressure/cpu") as stall:
            fields = dict(item.split("=") for item in stall.readline().split()[1:])
            pressure = float(fields["avg60"])
    except (OSError, KeyError, ValueError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"loadavg_1min": load, "cpu_pressure_avg60": pressure}


def targets(result: dict) -> dict:
    """Each target of the issue with the measured figure; ``None`` when its section did not run."""
    verdicts: dict = {"overhead_limit": OVERHEAD_LIMIT, "whole_run_limit": WHOLE_RUN_RATIO,
                      "memory_close_to_ideal": MEMORY_CLOSE_TO_IDEAL}
    rows = [row for stack in result.get("stack", []) for row in stack["keeps"]]
    # judged on the per-round ratios (b - c) / a, like the whole run: minima of a drifting machine
    # come from different minutes for (a), (b) and (c); the minima's figure stays beside it
    verdicts["overhead_max"] = max(row["overhead_median"] for row in rows) if rows else None
    verdicts["overhead_max_minima"] = max(row["overhead"] for row in rows) if rows else None
    verdicts["overhead_met"] = None if not rows else verdicts["overhead_max"] <= OVERHEAD_LIMIT
    run = result.get("whole_run")
    # judged on paired per-step ratios (sections.paired_saving): robust to a shared machine's drifts and spikes
    ratio = run["realised_over_flop_saving_paired"] if run else None
    verdicts["whole_run_ratio"] = ratio
    verdicts["whole_run_ratio_sum"] = run["realised_over_flop_saving"] if run else None
    verdicts["whole_run_met"] = None if ratio is None else ratio >= WHOLE_RUN_RATIO
    memory_rows = [row for memory in result.get("memory", []) for row in memory["keeps"]]
    verdicts["memory_met"] = None if not memory_rows else all(_memory_ok(row) for row in memory_rows)
    return verdicts


def _memory_ok(row: dict) -> bool:
    over_full, over_ideal = row["ltd_over_full"], row["ltd_over_ideal"]
    return over_full is not None and over_ideal is not None and over_full <= 1.0 and over_ideal <= MEMORY_CLOSE_TO_IDEAL


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# column widths of the regular tables (right-aligned cells after a two-space indent)
TRAIN_COLUMNS = (6, 9, 9, 8, 9, 8, 12, 10)
MEMORY_COLUMNS = (6, 9, 10, 6, 6)
COMPILE_COLUMNS = (8, 8, 8, 8, 9, 9, 8, 10, 7, 10)


def _aligned(widths: tuple[int, ...], cells: tuple) -> str:
    return "  " + " ".join(f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True))


def _keys(clock: str) -> tuple[str, str]:
    return ("min_s", "median_s") if clock == "wall" else ("cpu_min_s", "cpu_median_s")


def _stack_lines(stack: dict, clock: str) -> list[str]:
    shape, full = stack["shape"], stack["full"]
    low, mid = _keys(clock)
    lines = [f"Layer stack {shape['name']}: d={shape['hidden']} heads={shape['heads']} layers={shape['layers']} "
             f"seq={shape['seq_len']} batch={shape['batch']}; full (a) min {full[low]:.4f}s "
             f"median {full[mid]:.4f}s",
             f"  {'keep':>6} {'ltd (b) min/med s':>20} {'ideal (c) min/med s':>20} {'overhead':>9} "
             f"{'(median)':>9} {'realised':>9} {'(median)':>9}"]
    for row in stack["keeps"]:
        b, c = row["ltd"], row["ideal"]
        lines.append(f"  {row['keep']:>6} {b[low]:>9.4f}/{b[mid]:<10.4f} {c[low]:>9.4f}/"
                     f"{c[mid]:<10.4f} {_pct(row['overhead']):>9} {_pct(row['overhead_median']):>9} "
                     f"{_number(row['realised_fraction']):>9} {_number(row['realised_fraction_median']):>9}")
    return lines


def _train_lines(train: dict, clock: str) -> list[str]:
    model, base = train["model"], train["baseline"]
    low, mid = _keys(clock)
    lines = [f"Training step (gpt: layers={model['layers']} d={model['hidden']} vocab={model['vocab']} "
             f"seq={model['seq_len']} batch={model['batch']}): baseline min {base[low]:.4f}s "
             f"median {base[mid]:.4f}s",
             _aligned(TRAIN_COLUMNS, ("keep", "min s", "median s", "saving", "(median)", "ideal", "FLOP saving",
                                      "LT saving"))]
    for row in train["keeps"]:
        lines.append(_aligned(TRAIN_COLUMNS, (
            row["keep"], f"{row['time'][low]:.4f}", f"{row['time'][mid]:.4f}", _pct(row["saving"]),
            _pct(row["saving_median"]), _pct(row["ideal_saving"]), _pct(row["flop_saving"]),
            _pct(row["layer_token_saving"]))))
    return lines


def _memory_lines(memory: dict) -> list[str]:
    mib = 1024 * 1024
    lines = [f"Peak memory of one step, {memory['shape']['name']} ({memory['method']}, MiB above the "
             f"pre-step level): full (a) {memory['full']['step_peak_bytes'] / mib:.1f}",
             _aligned(MEMORY_COLUMNS, ("keep", "ltd (b)", "ideal (c)", "b/a", "b/c"))]
    for row in memory["keeps"]:
        lines.append(_aligned(MEMORY_COLUMNS, (
            row["keep"], f"{row['ltd']['step_peak_bytes'] / mib:.1f}", f"{row['ideal']['step_peak_bytes'] / mib:.1f}",
            _number(row["ltd_over_full"]), _number(row["ltd_over_ideal"]))))
    return lines


def _run_lines(run: dict) -> list[str]:
    schedule = run["schedule"]
    return [f"Whole MSLG run ({schedule['steps']} steps, kept {schedule['start']} +{schedule['increment']}, "
            f"full at {schedule['full_at']}): baseline {run['baseline_s']:.1f}s wall / "
            f"{run['baseline_cpu_s']:.1f}s CPU, "
            f"random-LTD {run['random_ltd_s']:.1f}s wall / {run['random_ltd_cpu_s']:.1f}s CPU, "
            f"ideal {run['ideal_s']:.1f}s wall / {run['ideal_cpu_s']:.1f}s CPU",
            f"  realised saving {_pct(run['realised_saving'])}, layer-token saving "
            f"{_pct(run['layer_token_saving'])}, FLOP saving {_pct(run['flop_saving'])}, realised/FLOP "
            f"{_number(run['realised_over_flop_saving'])}",
            f"  ideal (free sampling, gathers, scatters): saving {_pct(run['ideal_saving'])}, ideal/FLOP "
            f"{_number(run['ideal_over_flop_saving'])}",
            "  paired (per-step time / the same step's baseline time, median per kept length): realised saving "
            f"{_pct(run['realised_saving_paired'])}, realised/FLOP {_number(run['realised_over_flop_saving_paired'])}; "
            f"ideal saving {_pct(run['ideal_saving_paired'])}, "
            f"ideal/FLOP {_number(run['ideal_over_flop_saving_paired'])}"]


def _compile_lines(compiled: dict) -> list[str]:
    lines = [f"torch.compile (backend {compiled['backend']}, fullgraph) over the run's kept lengths, two steps each:",
             _aligned(COMPILE_COLUMNS, ("compiled", "keep", "multiple", "lengths", "compiled", "compiles", "(first)",
                                        "on repeat", "breaks", "limit hits"))]
    for row in compiled["runs"]:
        keep = "dynamic" if row.get("dynamic_keep") else "static"
        lines.append(_aligned(COMPILE_COLUMNS, (row.get("compiled", "model"), keep) + tuple(row[key] for key in (
            "multiple_of", "distinct_kept", "compiled_kept", "compiles", "compiles_first_length", "compiles_on_repeat",
            "graph_breaks", "recompile_limit_hits"))))
    steps = compiled.get("steps") or []
    for step in [steps] if isinstance(steps, dict) else steps:  # a dict: results written before per-block steps
        clock = "" if step["clock"] == "wall" else "cpu_"
        dynamic = step.get("random_ltd_dynamic")
        lines.append(f"  compiled steps ({'blocks' if step.get('per_block') else 'model'}) at kept {step['keep']} "
                     f"({step['clock']} clock, median): baseline {step['baseline'][clock + 'median_s'] * 1e3:.1f} ms, "
                     f"random-LTD {step['random_ltd'][clock + 'median_s'] * 1e3:.1f} ms"
                     + (f", dynamic kept length {dynamic[clock + 'median_s'] * 1e3:.1f} ms" if dynamic else "")
                     + f"; time ratio {_number(step['time_ratio_median'])}"
                     + (f" (dynamic {_number(step['dynamic_time_ratio_median'])})" if dynamic else "")
                     + f", FLOP ratio {_number(step['flop_ratio'])}")
    return lines


def _verdict(met: bool | None) -> str:
    return {None: "not measured", True: "met", False: "NOT met"}[met]


def table(result: dict) -> str:
    clock = result["settings"]["clock"]
    start, end = result["conditions"]["start"], result["conditions"]["end"]
    lines = [f"random-ltd bench — {result['date']} — {result['machine']['cpu']} "
             f"({result['machine']['threads']} threads, {result['machine']['device']}, {result['settings']['dtype']}); "
             f"times and savings on the {clock} clock",
             f"machine load: 1-min load average {start['loadavg_1min']} -> {end['loadavg_1min']}, "
             f"CPU pressure (avg60 %) {start['cpu_pressure_avg60']} -> {end['cpu_pressure_avg60']}"]
    for stack in result.get("stack", []):
        lines += [""] + _stack_lines(stack, clock)
    if "train_step" in result:
        lines += [""] + _train_lines(result["train_step"], clock)
    for memory in result.get("memory", []):
        lines += [""] + _memory_lines(memory)
    if "whole_run" in result:
        lines += [""] + _run_lines(result["whole_run"])
    if "compile" in result:
        lines += [""] + _compile_lines(result["compile"])
    t = result["targets"]
    lines += ["", "Targets:",
              f"  overhead <= {t['overhead_limit']}: max {_pct(t['overhead_max'])} paired "
              f"({_pct(t['overhead_max_minima'])} from minima) -> {_verdict(t['overhead_met'])}",
              f"  whole run realised/FLOP >= {t['whole_run_limit']}: {_number(t['whole_run_ratio'])} paired "
              f"({_number(t['whole_run_ratio_sum'])} summed) -> {_verdict(t['whole_run_met'])}",
              f"  memory (b) <= (a) and <= {t['memory_close_to_ideal']} x (c): {_verdict(t['memory_met'])}"]
    if result["settings"]["quick"]:
        lines.append("  (--quick: tiny shapes that check the machinery; these figures say nothing about the targets)")
    return "\n".join(lines)
