"""Training loop for the arms ``random-ltd train`` cannot run: TokenBypass and random-LTD with
protected special tokens.

It follows ``random_ltd.train.program.train_arm`` step for step (same seeds, initial weights,
data order, optimizer, kept-length schedule, LR and evaluation), so its plain ``random_ltd`` and
``baseline`` methods give the same losses as the training program (a test holds it to that) and
its arms compare fairly with the program's. What it adds: a model-preparation step per method,
and, for TokenBypass, the importance update from each step's per-token losses.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from random_ltd import tokenbypass
from random_ltd.driver import Driver
from random_ltd.rng import derive_seed
from random_ltd.surgery import apply
from random_ltd.train.arms import ArmPlan, make_lr_scheduler
from random_ltd.train.config import TrainConfig
from random_ltd.train.program import make_optimizer, training_model
from random_ltd.train.tasks import ModelShape, Task, to_device

METHODS = ("baseline", "random_ltd", "random_ltd_protected", "tokenbypass")


def special_ids(task: Task) -> tuple[int, ...]:
    """Ids TokenBypass never drops (Hou et al.): [CLS]/[SEP]/[MASK] for BERT, the end-of-text
    separator (BOS/EOS) for GPT."""
    if task.name == "bert":
        return (task.cls_id, task.sep_id, task.mask_id)
    return (task.split.eot_id,)


def protected_ids(task: Task) -> tuple[int, ...]:
    """Ids protected random-LTD keeps (Section 5.2): the sentence markers [CLS]/[SEP] for BERT."""
    if task.name == "bert":
        return (task.cls_id, task.sep_id)
    return (task.split.eot_id,)


def prepare(method: str, model: nn.Module, task: Task, plan: ArmPlan, shape: ModelShape, seed: int):
    """Apply the method's surgery; returns the handle the ``Driver`` sets the kept length on."""
    if method == "baseline" or not plan.drops:
        return None
    if method == "tokenbypass":
        return tokenbypass.apply(model, list(plan.drop_layers), special_ids=special_ids(task),
                                 vocab_size=shape.vocab_size)
    protect_ids = protected_ids(task) if method == "random_ltd_protected" else ()
    return apply(model, list(plan.drop_layers), seed=derive_seed(seed, 1), protect_ids=protect_ids)


def learn_importance(handle, task: Task, batch: dict, logits: torch.Tensor) -> None:
    if task.name == "bert":
        handle.update(*tokenbypass.mlm_token_losses(logits, batch["labels"]))
    else:
        handle.update(*tokenbypass.causal_lm_token_losses(logits, batch["input_ids"]))


def evaluate(task: Task, model: nn.Module, val_batches: list) -> dict:
    model.eval()
    values = task.evaluate(model, val_batches)
    model.train()
    return values


def train_method(method: str, config: TrainConfig, task: Task, shape: ModelShape, plan: ArmPlan, seed: int,
                 device: torch.device) -> dict:
    """Train one arm with one seed; returns its result with the validation curve
    (``curve``: ``[step, layer_tokens, val_loss]`` at each evaluation)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    torch.manual_seed(seed)
    model = training_model(task.build_model()).to(device)
    handle = prepare(method, model, task, plan, shape, seed)
    optimizer = make_optimizer(model, config)
    driver = Driver(handle, plan.schedule, batch_size=config.batch_size, seq_len=shape.seq_len,
                    lr_scheduler=make_lr_scheduler(optimizer, config, plan), num_layers=shape.num_layers)
    torch.manual_seed(derive_seed(seed, 2))  # the training program's dropout stream
    val_batches = [to_device(batch, device) for batch in task.val_batches()]
    curve = [[0, 0, evaluate(task, model, val_batches)["val_loss"]]]
    wall_clock = 0.0
    while driver.step < plan.steps:
        started = time.perf_counter()
        batch = to_device(task.train_batch(seed, driver.step), device)
        output = train_step(model, optimizer, driver, batch, config.grad_clip)
        if method == "tokenbypass" and handle is not None:
            learn_importance(handle, task, batch, output.logits)
        wall_clock += time.perf_counter() - started
        if driver.step % config.eval_every == 0 or driver.step == plan.steps:
            curve.append([driver.step, driver.layer_tokens, evaluate(task, model, val_batches)["val_loss"]])
    return {"seed": seed, "steps": driver.step, "layer_tokens": driver.layer_tokens, "wall_clock_s": round(wall_clock, 3),
            "final_val_loss": curve[-1][2], "curve": curve}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, driver: Driver, batch: dict, grad_clip: float):
    """One optimizer step, as the training program takes it; returns the model's output."""
    model.train()
    driver.before_step()
    output = model(**batch)
    output.loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    driver.after_step()
    output.loss.item()  # waits for the device, so the wall-clock is the step's
    return output
