"""Train the arms of several studies in parallel worker processes (``--jobs N``).

Arms are independent (own folder, own seeds), so N processes with one thread each keep N cores
busy with tiny models that one process with N threads would not. Each worker trains whole arms
through ``runs.train``; the studies then find them trained and only judge and report.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable

from random_ltd.ablate import runs
from random_ltd.ablate.studies import STUDIES


def pending_arms(names: list[str], options) -> list[runs.Arm]:
    """Arms of the studies ``names`` not trained yet, each once, in study order."""
    unique: dict[str, runs.Arm] = {}
    for name in names:
        for arm in (arm.for_engine(options.engine) for arm in STUDIES[name].build(options.quick)[0]):
            folder = str(arm.folder(options.root, options.seeds, options.seed))
            if folder not in unique and not runs.is_trained(arm, options.root, options.seeds, options.seed):
                unique[folder] = arm
    return list(unique.values())


def _start_worker(threads: int) -> None:
    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()


def _train(arm: runs.Arm, options) -> list[dict]:
    return runs.train(arm, options.root, options.seeds, options.seed, options.device)


def train_in_parallel(names: list[str], options, jobs: int, threads: int, log: Callable[[str], None] = print) -> None:
    arms = pending_arms(names, options)
    if not arms:
        return
    log(f"training {len(arms)} arms in {jobs} processes ({threads} thread(s) each)")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_train, arm, options): arm for arm in arms}
        for done, future in enumerate(as_completed(futures), 1):
            results = future.result()
            losses = ", ".join(f"{result['final_val_loss']:.4f}" for result in results)
            log(f"[{done}/{len(arms)}] {futures[future].label}: val loss {losses}")
