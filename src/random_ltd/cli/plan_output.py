"""What ``random-ltd plan`` prints and plots."""
from __future__ import annotations

from random_ltd.deepspeed_config import DeepSpeedLinear
from random_ltd.errors import ConfigError
from random_ltd.planner import Plan
from random_ltd.schedules import MSLG, ConstantKeep

TABLE_ROWS = 12
METHOD_NAMES = {"random_ltd": "random-LTD", "mod": "MoD"}


def amount(value: float) -> str:
    """``524288 -> 524.29K``, ``3e11 -> 300.00B``."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:g}"


def layer_ranges(indices: list[int]) -> str:
    """``[1, 2, 3, 7] -> "1-3, 7"``."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def describe_schedule(plan: Plan) -> str:
    schedule = plan.schedule
    if isinstance(schedule, ConstantKeep):
        return f"constant kept length {schedule.keep}"
    if isinstance(schedule, DeepSpeedLinear):
        mode = "replayed exactly" if schedule.exact else "defects repaired"
        return (f"DeepSpeed fixed_linear: min_value {schedule.start}, max_value {schedule.seq_len}, seq_per_step "
                f"{schedule.increment}, require_steps {schedule.require_steps:,} ({mode})")
    if not isinstance(schedule, MSLG):
        return repr(schedule)
    if schedule.every_steps is not None:
        growth = f"every {schedule.every_steps:,} steps ({amount(schedule.every_steps * plan.tokens_per_step)} tokens)"
    elif schedule.every_tokens is not None:
        growth = (f"every {amount(schedule.every_tokens)} tokens "
                  f"({schedule.every_tokens / plan.tokens_per_step:,.1f} steps)")
    else:
        growth = f"linearly to full length at step {schedule.full_at_step:,}"
    rounding = f", rounded down to multiples of {schedule.multiple_of}" if schedule.multiple_of else ""
    return f"MSLG: start {schedule.start}, +{schedule.increment} {growth}{rounding}"


def _full_length_line(plan: Plan) -> str:
    step = plan.full_length_step
    if step is None:
        return "never at full length within training"
    return (f"full length {plan.seq_len} from step {step:,} ({amount(step * plan.tokens_per_step)} tokens, "
            f"{step / plan.total_steps:.1%} of training)")


def kept_table(plan: Plan) -> list[str]:
    points = plan.change_points
    shown = sorted({round(i * (len(points) - 1) / (TABLE_ROWS - 1)) for i in range(TABLE_ROWS)}) \
        if len(points) > TABLE_ROWS else range(len(points))
    lines = [f"  kept-length schedule ({len(points)} distinct lengths, {len(shown)} shown)",
             f"  {'step':>12} {'tokens':>10} {'training':>9} {'kept':>6}"]
    for index in shown:
        step, kept = points[index]
        lines.append(f"  {step:>12,} {amount(step * plan.tokens_per_step):>10} "
                     f"{step / plan.total_steps:>9.1%} {kept:>6}")
    return lines


def report(plan: Plan, *, target_saving: float | None = None, plot: str | None = None) -> str:
    lines = _mod_lines(plan) if plan.method == "mod" else _random_ltd_lines(plan, target_saving)
    if plot:
        lines.append(f"  plot               {plot}")
    return "\n".join(lines)


def _random_ltd_lines(plan: Plan, target_saving: float | None) -> list[str]:
    return [
        "random-LTD plan",
        f"  model     {plan.num_layers} layers, sequence length {plan.seq_len}; "
        f"{len(plan.drop_layers)} layers drop tokens: {layer_ranges(plan.drop_layers)}",
        _run_line(plan),
        f"  schedule  {describe_schedule(plan)}",
        f"            {_full_length_line(plan)}",
        "",
        *kept_table(plan),
        "",
        *_totals_lines(plan, target_saving),
    ]


def _mod_lines(plan: Plan) -> list[str]:
    return [
        "Mixture-of-Depths plan",
        f"  model     {plan.num_layers} layers, sequence length {plan.seq_len}; "
        f"{len(plan.drop_layers)} routed layers: {layer_ranges(plan.drop_layers)}",
        _run_line(plan),
        f"  routing   routed layers run the top {plan.routed_length} of {plan.seq_len} tokens "
        f"(capacity {plan.capacity}) plus a router each",
        "",
        *_totals_lines(plan, None),
    ]


def _run_line(plan: Plan) -> str:
    return (f"  run       {plan.total_steps:,} steps x {plan.batch_size:,} sequences "
            f"({plan.tokens_per_step:,} tokens/step) = {amount(plan.total_steps * plan.tokens_per_step)} tokens")


def _totals_lines(plan: Plan, target_saving: float | None) -> list[str]:
    model = plan.training.flop_model
    vocab = f"vocab {model.vocab_size:,}" if model.vocab_size else "no output layer"
    routers = "routers included; " if plan.method == "mod" else ""
    return [
        f"  layer-tokens       baseline {amount(plan.baseline_layer_tokens)}   "
        f"{METHOD_NAMES[plan.method]} {amount(plan.layer_tokens)}",
        f"  LayerToken saving  {plan.layer_token_saving:.1%}"
        + (f"   (target {target_saving:.1%})" if target_saving else ""),
        f"  FLOP saving        {plan.flop_saving:.1%}   ({routers}d_model {model.d_model}, ffn {model.ffn}, {vocab}; "
        "matmuls, training = 3 x forward)",
    ]


def save_plot(plan: Plan, path: str, curves: dict[str, list]) -> None:
    """Two panels over training steps: the kept (or routed) length; the LayerToken LR against the iteration LR."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plot", "needs matplotlib: pip install 'random-ltd[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (kept_axis, lr_axis) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    steps = [step for step, _ in plan.change_points] + [plan.total_steps]
    kept = [k for _, k in plan.change_points]
    kept_axis.step(steps, kept + kept[-1:], where="post")
    kept_axis.set_ylabel("routed length" if plan.method == "mod" else "kept length")
    kept_axis.set_ylim(0, plan.seq_len * 1.05)
    kept_axis.set_title(f"LayerToken saving {plan.layer_token_saving:.1%}, FLOP saving {plan.flop_saving:.1%}")
    lr_axis.plot(curves["step"], curves["layer_token_lr"], label=f"LayerToken LR ({METHOD_NAMES[plan.method]})")
    lr_axis.plot(curves["step"], curves["iteration_lr"], "--", label="iteration LR")
    lr_axis.set_ylabel("LR / peak LR")
    lr_axis.set_xlabel("training step")
    lr_axis.legend()
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as error:
        raise ConfigError("plot", f"cannot write {path!r}: {error.strerror}") from None
    finally:
        plt.close(figure)
