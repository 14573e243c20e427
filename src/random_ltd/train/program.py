"""The training program behind ``random-ltd train``: baseline and random-LTD, side by side.

Read it top to bottom. ``run_training`` checks everything that can be wrong before any
training starts, then trains each arm for each seed with ``train_arm`` and writes the report.
Both arms start from the same seed, the same initial weights and the same data order; they
differ only in the random-LTD surgery, the kept-length schedule and the LR clock (see
``arms.py``). Evaluation always runs at full length (wrapped layers never drop in eval mode).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from random_ltd.driver import Driver
from random_ltd.integrations.distributed import load_rank_state, rank_seed
from random_ltd.rng import derive_seed
from random_ltd.train import checkpoint, distributed, report
from random_ltd.train.arms import ArmPlan, make_lr_scheduler, plan_arms, step_flops
from random_ltd.train.config import ConfigError, TrainConfig
from random_ltd.train.methods import RANDOM_LTD, Method
from random_ltd.train.rundir import RunDir, arm_dir, pick_device
from random_ltd.train.tasks import ModelShape, Task, make_task, resolve_config, to_device
from random_ltd.train.trackers import Trackers, check_installed

StepHook = Callable[[str, int, int], None]  # (arm, seed, steps done), after each step
ONE_RANK = distributed.Ranks()  # a single process, no torchrun
NO_TRACKERS = Trackers([])


def run_training(config: TrainConfig, *, resume: bool = False, command: str | None = None,
                 on_step: StepHook | None = None, method: Method = RANDOM_LTD) -> dict:
    """Train every arm of ``config`` for every seed; return the summary (also in summary.json).

    ``resume=True`` continues the run in ``config.out`` from its checkpoints. ``ConfigError``
    (a one-line message naming the flag) is raised for bad input before any training.
    ``method`` is what the dropping arm applies to its model (``random_ltd.train.methods``).
    """
    config = resolve_config(config)
    check_installed(config.report_to)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    ranks = distributed.setup(device)  # one rank unless started by torchrun
    device = distributed.local_device(device)
    run_dir = RunDir(Path(distributed.gather_objects(str(RunDir.open(config, resume).root), ranks)[0]))
    if resume:  # the report shows the command that started the run
        command = run_dir.original_command() or command
    task = make_task(config)
    task.prepare()
    shape = task.shape()
    plans = plan_arms(config, shape)
    if ranks.is_main:
        run_dir.create(config, command)
    distributed.barrier(ranks)
    if not config.quick:
        warm_up(task, device)

    trackers = Trackers.open(config.report_to if ranks.is_main else (), run_dir.root, config)
    results = {}
    try:
        for seed in range(config.seed, config.seed + config.seeds):
            for arm, plan in plans.items():
                results[(arm, seed)] = train_arm(config, task, shape, plan, seed, run_dir.root, device, on_step, ranks,
                                                 method, trackers)
        summary = None
        if ranks.is_main:
            summary = report.write(run_dir.root, config, plans, results, task.describe_data(), command, str(device),
                                   world_size=ranks.world_size)
            trackers.log_summary(summary)
    finally:
        trackers.close()
    distributed.shutdown(ranks)
    return summary


def train_arm(config: TrainConfig, task: Task, shape: ModelShape, plan: ArmPlan, seed: int, root: Path,
              device: torch.device, on_step: StepHook | None = None,
              ranks: distributed.Ranks = ONE_RANK, method: Method = RANDOM_LTD,
              trackers: Trackers = NO_TRACKERS) -> dict:
    """Train one arm with one seed; resumes from the arm's checkpoint when there is one.

    Under torchrun every rank runs this; only rank 0 writes metrics, checkpoints and results.
    ``method`` is the dropping arm's surgery and per-step hook (``random_ltd.train.methods``).
    """
    folder = arm_dir(root, plan.arm, seed)
    finished = folder / "result.json"
    if finished.exists():
        return json.loads(finished.read_text())

    model, optimizer, driver = build_arm(config, task, shape, plan, seed, device, ranks, method)
    state = restore(folder, model, optimizer, driver)
    trained = distributed.wrap(model, ranks)  # DDP averages gradients across ranks

    def step() -> dict:
        return train_step(config, task, shape, plan, seed, trained, optimizer, driver, state, device, ranks, method)

    def checkpoint_now() -> None:
        if ranks.is_main:
            save(folder, model, optimizer, driver, state)

    val_batches = [to_device(batch, device) for batch in task.val_batches()]
    with checkpoint.MetricsLog(folder / "metrics.jsonl", state, ranks.is_main,
                               listener=lambda record: trackers.log_step(plan.arm, seed, record)) as metrics:
        run_steps(config, plan, seed, driver, metrics, step, lambda: evaluate(task, model, val_batches, state),
                  checkpoint_now, on_step, show_progress=config.progress and ranks.is_main)
    return finish_arm(folder, plan, driver, state, seed, model, ranks, checkpoint_now)


def run_steps(config: TrainConfig, plan: ArmPlan, seed: int, driver: Driver, metrics: checkpoint.MetricsLog,
              step: Callable[[], dict], evaluate_now: Callable[[], dict], checkpoint_now: Callable[[], None],
              on_step: StepHook | None, show_progress: bool) -> None:
    """Step until the plan's end: a metrics line per step, an evaluation every ``eval_every`` steps
    (and at step 0 and the end), a checkpoint every ``checkpoint_every`` steps."""
    if driver.step == 0:
        metrics.write({"step": 0, **evaluate_now()})
    bar = tqdm(total=plan.steps, initial=driver.step, desc=f"{plan.arm} (seed {seed})", unit="step",
               disable=not show_progress, dynamic_ncols=True)
    while driver.step < plan.steps:
        record = step()
        if driver.step % config.eval_every == 0 or driver.step == plan.steps:
            record.update(evaluate_now())
        metrics.write(record)
        bar.update(1)
        bar.set_postfix(kept=record["kept"], loss=f"{record['train_loss']:.3f}", refresh=False)
        if driver.step % config.checkpoint_every == 0 and driver.step < plan.steps:
            metrics.mark()
            checkpoint_now()
        if on_step is not None:
            on_step(plan.arm, seed, driver.step)
    bar.close()


def finish_arm(folder: Path, plan: ArmPlan, driver: Driver, state: dict, seed: int, model: torch.nn.Module,
               ranks: distributed.Ranks, checkpoint_now: Callable[[], None]) -> dict:
    """The arm's result (and, across ranks, whether they stayed identical); final checkpoint and result.json."""
    result = arm_result(plan, driver, state, seed)
    if ranks.distributed:
        result["rank_seeds"] = distributed.gather_objects(getattr(driver.handle, "seed", None), ranks)
        digests = distributed.gather_objects(distributed.parameter_digest(model), ranks)
        result["parameters_identical_across_ranks"] = len(set(digests)) == 1
    checkpoint_now()
    if ranks.is_main:
        report.write_json(folder / "result.json", result)
    distributed.barrier(ranks)
    return result


def build_arm(config: TrainConfig, task: Task, shape: ModelShape, plan: ArmPlan, seed: int, device: torch.device,
              ranks: distributed.Ranks = ONE_RANK, method: Method = RANDOM_LTD):
    """Model, optimizer and driver of one arm; both arms start from the same weights and RNG state.

    Every rank builds the same weights; each draws its own random-LTD indices (per-rank seed).
    The driver counts the global batch (all ranks) for the schedule, layer-tokens and LR.
    """
    torch.manual_seed(seed)  # same seed -> same initial weights; the surgery adds no parameters
    model = training_model(task.build_model()).to(device)
    ltd_seed = derive_seed(seed, 1)
    ltd_seed = rank_seed(ltd_seed, ranks.rank) if ranks.distributed else ltd_seed
    handle = method.prepare(model, task, plan.drop_layers, shape, ltd_seed) if plan.drops else None
    optimizer = make_optimizer(model, config)
    driver = Driver(handle, plan.schedule, batch_size=config.batch_size * ranks.world_size, seq_len=shape.seq_len,
                    lr_scheduler=make_lr_scheduler(optimizer, config, plan), num_layers=shape.num_layers)
    torch.manual_seed(derive_seed(seed, 2))  # the same dropout stream in both arms
    return model, optimizer, driver


def restore(folder: Path, model, optimizer, driver: Driver) -> dict:
    """Load the arm's checkpoint into the objects when there is one; return the bookkeeping."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = checkpoint.load(folder / checkpoint.FILENAME)
    if saved is None:
        return fresh_state()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    load_rank_state(driver, saved["driver"])  # step, counters, schedules, LR, random-LTD count; this rank's seed
    checkpoint.restore_rng(saved["rng"])
    return saved["state"]


def fresh_state() -> dict:
    """An arm's bookkeeping before its first step: the time and FLOP counters ``train_step`` adds to."""
    return {"wall_clock_s": 0.0, "cpu_s": 0.0, "flops": 0, "eval_s": 0.0, "metrics_bytes": 0, "last_eval": None,
            "load_average_start": load_average()}


def warm_up(task: Task, device: torch.device, steps: int = 2) -> None:
    """A few untimed steps on a throwaway model, so that one-off costs (thread pools, allocator,
    kernel selection) do not land in the first arm's wall-clock. Leaves torch's RNG untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = training_model(task.build_model()).to(device)
        model.train()
        for step in range(steps):
            task.forward(model, to_device(task.train_batch(0, step), device)).loss.backward()
    del model


def training_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model with Hugging Face's key/value cache off: the program never generates, so a cache
    built in every training forward would be wasted work."""
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None):
        config.use_cache = False
    return model


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and other 1-D parameters."""
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": config.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), fused=fused_adamw(model))


def fused_adamw(model: torch.nn.Module) -> bool:
    """The fused AdamW kernel where torch has one (CPU, CUDA): one pass over all parameters instead
    of a dozen ``foreach`` kernels; on the ``gpt`` task's model it cuts the optimizer step from
    about 20 ms to 3 ms on one CPU thread (docs/benchmarks.md), a cost random-LTD cannot shrink."""
    return all(p.device.type in ("cpu", "cuda") for p in model.parameters())


def train_step(config: TrainConfig, task: Task, shape: ModelShape, plan: ArmPlan, seed: int, model, optimizer,
               driver: Driver, state: dict, device: torch.device,
               ranks: distributed.Ranks = ONE_RANK, method: Method = RANDOM_LTD) -> dict:
    """One optimizer step; returns its metrics line. Wall-clock counts training work only.

    Rank ``r`` of ``n`` trains on batch ``step * n + r`` (with one rank: batch ``step``).
    """
    started, started_cpu = time.perf_counter(), time.process_time()
    model.train()
    kept = driver.before_step()  # sets this step's kept length on the model
    lr = optimizer.param_groups[0]["lr"]
    batch = to_device(task.train_batch(seed, driver.step * ranks.world_size + ranks.rank), device)
    output = task.forward(model, batch)
    loss = output.loss
    loss.backward()
    if driver.handle is not None:
        method.after_backward(driver.handle, task, batch, output)
    apply_gradients(model, optimizer, config.grad_clip)
    driver.after_step()  # counts layer-tokens and steps the LR
    train_loss = loss.detach().item()  # also waits for the device
    state["wall_clock_s"] += time.perf_counter() - started
    state["cpu_s"] += time.process_time() - started_cpu  # less sensitive than wall-clock to other load
    state["flops"] += step_flops(config, shape, plan, kept) * ranks.world_size
    return {"step": driver.step, "train_loss": train_loss, "lr": lr, "kept": kept, "layer_tokens": driver.layer_tokens,
            "tokens": driver.tokens, "flops": state["flops"], "wall_clock_s": round(state["wall_clock_s"], 4)}


def apply_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
    """The end of every training step, after the backward pass: clip the gradients (``grad_clip`` > 0),
    step the optimizer, clear the gradients."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def evaluate(task: Task, model: torch.nn.Module, val_batches: list, state: dict) -> dict:
    started = time.perf_counter()
    model.eval()
    values = task.evaluate(model, val_batches)
    model.train()
    state["eval_s"] += time.perf_counter() - started
    state["last_eval"] = values
    return values


def save(folder: Path, model, optimizer, driver: Driver, state: dict) -> None:
    checkpoint.save_atomic(folder / checkpoint.FILENAME, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "driver": driver.state_dict(),
        "rng": checkpoint.rng_state(), "state": dict(state),
    })


def load_average() -> float | None:
    """The machine's 1-minute load average: wall-clock comparisons mean little on a busy machine."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def arm_result(plan: ArmPlan, driver: Driver, state: dict, seed: int) -> dict:
    last = state["last_eval"] or {}
    result = {"arm": plan.arm, "seed": seed, "steps": driver.step, "tokens": driver.tokens,
              "layer_tokens": driver.layer_tokens, "flops": state["flops"],
              "wall_clock_s": round(state["wall_clock_s"], 3), "cpu_s": round(state["cpu_s"], 3),
              "eval_s": round(state["eval_s"], 3),
              "load_average": [state.get("load_average_start"), load_average()]}
    result.update({f"final_{name}": value for name, value in last.items()})
    return result


__all__ = ["ConfigError", "TrainConfig", "run_training", "train_arm"]
