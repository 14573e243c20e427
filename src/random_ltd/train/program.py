"""The training program behind ``random-ltd train``: baseline and random-LTD, side by side.

Read it top to bottom. ``run_training`` resolves the configuration (every rule lives in
``config.resolve``) and loads the data before any training; then, for each seed, it opens every
arm (the same initial weights, the same data order, each with its own torch RNG state) and steps
the arms in lockstep (one step of each per round, in a shuffled order) or one after the other,
timing each step; then it writes the report. The arms differ only in the random-LTD surgery, the
kept-length schedule and the LR clock (``arms.py``), and an arm computes bitwise the same in
either order. Evaluation always runs at full length (wrapped layers never drop in eval mode).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from random_ltd.driver import Driver, restore_rng, rng_state
from random_ltd.integrations.distributed import load_rank_state, rank_seed
from random_ltd.rng import derive_seed
from random_ltd.train import checkpoint, data_parallel, memory, mod_arm, report, tread
from random_ltd.train.arms import ArmPlan, make_lr_scheduler, plan_arms, step_flops
from random_ltd.train.config import ConfigError, TrainConfig, resolve
from random_ltd.train.methods import RANDOM_LTD, Method
from random_ltd.train.rundir import RunDir, arm_dir, pick_device
from random_ltd.train.tasks import ModelShape, Task, make_task, to_device
from random_ltd.train.trackers import Trackers, check_installed

StepHook = Callable[[str, int, int], None]  # (arm, seed, steps done), after each step
ONE_RANK = data_parallel.Ranks()  # a single process, no torchrun
NO_TRACKERS = Trackers([])


@dataclasses.dataclass
class Counts:
    """What an arm has counted so far; saved in its checkpoint."""

    wall_clock_s: float = 0.0  # training steps only
    cpu_s: float = 0.0  # process CPU time of the steps: less sensitive than wall-clock to other load
    flops: int = 0
    eval_s: float = 0.0
    metrics_bytes: int = 0  # how much of metrics.jsonl the checkpoint covers
    last_eval: dict | None = None
    load_average_start: float | None = None
    step_s: list[float] = dataclasses.field(default_factory=list)  # each step's wall-clock, for the paired saving


@dataclasses.dataclass
class Run:
    """What every arm of the run shares."""

    config: TrainConfig
    task: Task
    shape: ModelShape
    device: torch.device
    ranks: data_parallel.Ranks = ONE_RANK
    method: Method = RANDOM_LTD  # what the dropping arm applies to its model (``methods.py``)
    root: Path = Path(".")
    trackers: Trackers = NO_TRACKERS
    on_step: StepHook | None = None


@dataclasses.dataclass
class Arm:
    """One arm of one seed while it trains."""

    plan: ArmPlan
    seed: int
    folder: Path
    model: nn.Module
    trained: nn.Module  # what the steps call: the model, or DDP around it under torchrun
    optimizer: torch.optim.Optimizer
    driver: Driver
    counts: Counts
    rng: dict  # the arm's torch RNG state between its steps: arms never share a stream
    metrics: checkpoint.MetricsLog
    val_batches: list
    bar: tqdm

    @property
    def done(self) -> bool:
        return self.driver.step >= self.plan.steps


def run_training(config: TrainConfig, *, resume: bool = False, command: str | None = None,
                 on_step: StepHook | None = None, method: Method = RANDOM_LTD) -> dict:
    """Train every arm of ``config`` for every seed; return the summary (also in summary.json).

    ``resume=True`` continues the run in ``config.out`` from its checkpoints. ``ConfigError``
    (a one-line message naming the flag) is raised for bad input before any training.
    """
    config = resolve(config)
    check_installed(config.report_to)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    ranks = data_parallel.setup(device)  # one rank unless started by torchrun
    device = data_parallel.local_device(device)
    run_dir = RunDir(Path(data_parallel.gather_objects(str(RunDir.open(config, resume).root), ranks)[0]))
    if resume:  # the report shows the command that started the run
        command = run_dir.original_command() or command
    task = make_task(config)
    task.prepare()
    shape = task.shape()
    plans = plan_arms(config, shape)
    lockstep = use_lockstep(config, shape, len(plans), device)
    if ranks.is_main:
        run_dir.create(config, command)
    data_parallel.barrier(ranks)
    if not config.quick:
        warm_up(task, device)

    trackers = Trackers.open(config.report_to if ranks.is_main else (), run_dir.root, config)
    run = Run(config, task, shape, device, ranks, method, run_dir.root, trackers, on_step)
    results, summary = {}, None
    try:
        for seed in range(config.seed, config.seed + config.seeds):
            results.update(train_seed(run, plans, seed, lockstep))
        if ranks.is_main:
            summary = report.write(run_dir.root, config, plans, results, task.describe_data(), command, str(device),
                                   world_size=ranks.world_size, lockstep=lockstep)
            trackers.log_summary(summary)
    finally:
        trackers.close()
    data_parallel.shutdown(ranks)
    return summary


def use_lockstep(config: TrainConfig, shape: ModelShape, arm_count: int, device: torch.device) -> bool:
    """``--arm-order``; ``auto``: lockstep where the arms fit in memory together (``memory.py``)."""
    if config.arm_order != "auto":
        return config.arm_order == "lockstep"
    return arm_count > 1 and memory.fits_together(arm_count, shape, memory.free_memory(device))


def train_seed(run: Run, plans: dict[str, ArmPlan], seed: int, lockstep: bool) -> dict[tuple[str, int], dict]:
    """Every arm of ``seed``, all together in lockstep or one after the other; their results.
    An arm that finished before (a resumed run) gives back its saved result."""
    results, unfinished = {}, []
    for plan in plans.values():
        saved = arm_dir(run.root, plan.arm, seed) / "result.json"
        if saved.exists():
            results[(plan.arm, seed)] = json.loads(saved.read_text())
        else:
            unfinished.append(plan)
    groups = [unfinished] if lockstep else [[plan] for plan in unfinished]
    for group in groups:
        arms = [open_arm(run, plan, seed, position) for position, plan in enumerate(group)]
        try:
            step_in_lockstep(run, arms, random.Random(derive_seed(seed, 3)))  # the same order on every rank
            for arm in arms:
                results[(arm.plan.arm, seed)] = finish_arm(run, arm)
        finally:
            for arm in arms:
                arm.metrics.close()
                arm.bar.close()
    return results


def step_in_lockstep(run: Run, arms: list[Arm], shuffler: random.Random) -> None:
    """Round after round, one step of every unfinished arm in a shuffled order, until each has
    reached its plan's end (with one arm: the plain training loop). After each step: a metrics
    line; an evaluation every ``eval_every`` steps (and at step 0 and the end); a checkpoint every
    ``checkpoint_every`` steps."""
    config = run.config
    for arm in arms:
        if arm.driver.step == 0:
            arm.metrics.write({"step": 0, **evaluate(run, arm)})
    while unfinished := [arm for arm in arms if not arm.done]:
        shuffler.shuffle(unfinished)
        for arm in unfinished:
            record = train_step(run, arm)
            if arm.driver.step % config.eval_every == 0 or arm.done:
                record.update(evaluate(run, arm))
            arm.metrics.write(record)
            arm.bar.update(1)
            arm.bar.set_postfix(kept=record["kept"], loss=f"{record['train_loss']:.3f}", refresh=False)
            if arm.driver.step % config.checkpoint_every == 0 and not arm.done:
                save_checkpoint(run, arm)
            if run.on_step is not None:
                run.on_step(arm.plan.arm, arm.seed, arm.driver.step)


def train_step(run: Run, arm: Arm) -> dict:
    """One optimizer step of ``arm`` under its own RNG state; returns its metrics line.

    Rank ``r`` of ``n`` trains on batch ``step * n + r`` (with one rank: batch ``step``). The
    step's wall-clock and CPU time count the training work only.
    """
    ranks, driver = run.ranks, arm.driver
    with own_rng(arm):
        started, started_cpu = time.perf_counter(), time.process_time()
        arm.trained.train()
        kept = driver.before_step()  # sets this step's kept length on the model
        lr = arm.optimizer.param_groups[0]["lr"]
        batch = to_device(run.task.train_batch(arm.seed, driver.step * ranks.world_size + ranks.rank), run.device)
        output = run.task.forward(arm.trained, batch)
        output.loss.backward()
        if driver.handle is not None:
            run.method.after_backward(driver.handle, run.task, batch, output)
        apply_gradients(arm.model, arm.optimizer, run.config.grad_clip)
        driver.after_step()  # counts layer-tokens and steps the LR
        train_loss = output.loss.detach().item()  # also waits for the device
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    counts = arm.counts
    counts.step_s.append(round(seconds, 6))
    counts.wall_clock_s += seconds
    counts.cpu_s += cpu_seconds
    counts.flops += step_flops(run.config, run.shape, arm.plan, kept) * ranks.world_size
    record = {"step": driver.step, "train_loss": train_loss, "lr": lr, "kept": kept,
              "layer_tokens": driver.layer_tokens, "tokens": driver.tokens, "flops": counts.flops,
              "wall_clock_s": round(counts.wall_clock_s, 4)}
    aux_loss = getattr(output, "mod_aux_loss", None)  # the mod arm's router-prediction loss, inside train_loss
    if aux_loss is not None:
        record["mod/aux_loss"] = aux_loss.detach().item()
    return record


@contextlib.contextmanager
def own_rng(arm: Arm) -> Iterator[None]:
    """Run with ``arm``'s torch RNG state and keep what it leaves: stepped in lockstep, the arms'
    draws (dropout, random-LTD's indices) never interleave, so each computes what it would alone."""
    restore_rng(arm.rng)
    try:
        yield
    finally:
        arm.rng = rng_state()


def evaluate(run: Run, arm: Arm) -> dict:
    started = time.perf_counter()
    with own_rng(arm):
        arm.model.eval()
        values = run.task.evaluate(arm.model, arm.val_batches)
        arm.model.train()
    arm.counts.eval_s += time.perf_counter() - started
    arm.counts.last_eval = values
    return values


def open_arm(run: Run, plan: ArmPlan, seed: int, position: int = 0) -> Arm:
    """The arm's model, optimizer, driver and RNG state, continued from its checkpoint when there is one."""
    folder = arm_dir(run.root, plan.arm, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model, optimizer, driver = build_arm(run.config, run.task, run.shape, plan, seed, run.device, run.ranks,
                                         run.method)
    counts, rng = Counts(load_average_start=load_average()), rng_state()
    saved = checkpoint.load(folder / checkpoint.FILENAME)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        load_rank_state(driver, saved["driver"])  # step, counters, schedules, LR, random-LTD count; this rank's seed
        counts, rng = Counts(**saved["state"]), saved["rng"]
    metrics = checkpoint.MetricsLog(folder / "metrics.jsonl", counts.metrics_bytes, run.ranks.is_main,
                                    listener=lambda record: run.trackers.log_step(plan.arm, seed, record))
    bar = tqdm(total=plan.steps, initial=driver.step, desc=f"{plan.arm} (seed {seed})", unit="step", position=position,
               disable=not (run.config.progress and run.ranks.is_main), dynamic_ncols=True)
    val_batches = [to_device(batch, run.device) for batch in run.task.val_batches()]
    if plan.arm == "mod":  # causal routing: one sequence per call
        val_batches = mod_arm.single_sequences(val_batches)
    return Arm(plan, seed, folder, model, data_parallel.wrap(model, run.ranks), optimizer, driver, counts, rng, metrics,
               val_batches, bar)


def build_arm(config: TrainConfig, task: Task, shape: ModelShape, plan: ArmPlan, seed: int, device: torch.device,
              ranks: data_parallel.Ranks = ONE_RANK, method: Method = RANDOM_LTD):
    """Model, optimizer and driver of one arm; every arm starts from the same weights and RNG state.

    Every rank builds the same weights; each draws its own random-LTD indices (per-rank seed).
    The driver counts the global batch (all ranks) for the schedule, layer-tokens and LR.
    """
    torch.manual_seed(seed)  # same seed -> same initial weights (the mod arm's routers are drawn after them)
    model = training_model(task.build_model()).to(device)
    ltd_seed = derive_seed(seed, 1)
    ltd_seed = rank_seed(ltd_seed, ranks.rank) if ranks.distributed else ltd_seed
    method = {"tread": tread.TREAD, "mod": mod_arm.MixtureOfDepthsArm(config)}.get(plan.arm, method)
    handle = method.prepare(model, task, plan.drop_layers, shape, ltd_seed) if plan.drops else None
    optimizer = make_optimizer(model, config)  # after the surgery: it sees the mod arm's routers
    driver = Driver(handle, plan.schedule, batch_size=config.batch_size * ranks.world_size, seq_len=shape.seq_len,
                    lr_scheduler=make_lr_scheduler(optimizer, config, plan), num_layers=shape.num_layers)
    # Every arm's stream starts from this state. Random-LTD's draws consume it too (they come from
    # torch's default stream so that gradient checkpointing replays them), so the arms' dropout
    # masks agree only until the first dropping layer draws.
    torch.manual_seed(derive_seed(seed, 2))
    return model, optimizer, driver


def save_checkpoint(run: Run, arm: Arm) -> None:
    """Everything the arm's next step depends on (rank 0 writes)."""
    arm.counts.metrics_bytes = arm.metrics.covered()
    if run.ranks.is_main:
        checkpoint.save_atomic(arm.folder / checkpoint.FILENAME, {
            "model": arm.model.state_dict(), "optimizer": arm.optimizer.state_dict(),
            "driver": arm.driver.state_dict(), "rng": arm.rng, "state": dataclasses.asdict(arm.counts),
        })


def finish_arm(run: Run, arm: Arm) -> dict:
    """The arm's result (and, across ranks, whether they stayed identical); final checkpoint and result.json."""
    result = arm_result(arm)
    ranks = run.ranks
    final_evaluate = getattr(run.task, "final_evaluate", None)  # a task's end-of-training measures (dit: samples)
    if final_evaluate is not None and ranks.is_main:
        with own_rng(arm):
            result.update({f"final_{name}": value for name, value in final_evaluate(arm.model, arm.folder).items()})
    if ranks.distributed:
        result["rank_seeds"] = data_parallel.gather_objects(getattr(arm.driver.handle, "seed", None), ranks)
        digests = data_parallel.gather_objects(data_parallel.parameter_digest(arm.model), ranks)
        result["parameters_identical_across_ranks"] = len(set(digests)) == 1
    save_checkpoint(run, arm)
    if ranks.is_main:
        report.write_json(arm.folder / "result.json", result)
    data_parallel.barrier(ranks)
    return result


def arm_result(arm: Arm) -> dict:
    counts, driver = arm.counts, arm.driver
    result = {"arm": arm.plan.arm, "seed": arm.seed, "steps": driver.step, "tokens": driver.tokens,
              "layer_tokens": driver.layer_tokens, "flops": counts.flops,
              "wall_clock_s": round(counts.wall_clock_s, 3), "cpu_s": round(counts.cpu_s, 3),
              "eval_s": round(counts.eval_s, 3), "load_average": [counts.load_average_start, load_average()],
              "step_s": list(counts.step_s)}
    result.update({f"final_{name}": value for name, value in (counts.last_eval or {}).items()})
    return result


def train_arm(config: TrainConfig, task: Task, shape: ModelShape, plan: ArmPlan, seed: int, root: Path,
              device: torch.device, method: Method = RANDOM_LTD) -> dict:
    """Train one arm with one seed alone, without a run report (the ablation's ``bare`` engine);
    resumes from the arm's checkpoint, or reads back its finished result."""
    run = Run(config, task, shape, device, method=method, root=Path(root))
    return train_seed(run, {plan.arm: plan}, seed, lockstep=False)[(plan.arm, seed)]


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


def apply_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
    """The end of every training step, after the backward pass: clip the gradients (``grad_clip`` > 0),
    step the optimizer, clear the gradients."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def load_average() -> float | None:
    """The machine's 1-minute load average: wall-clock comparisons mean little on a busy machine."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


__all__ = ["ConfigError", "TrainConfig", "run_training", "train_arm"]
