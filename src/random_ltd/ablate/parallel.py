"""Train the arms of several studies in parallel worker processes (``--jobs N``).

Arms are independent (own folder, own seeds), so N processes with one thread each keep N cores
busy with tiny models that one process with N threads would not. Each worker trains whole arms
through ``runs.train``; the studies then find them trained and only judge and report.
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed

from random_ltd.ablate import runs
from random_ltd.ablate.studies import STUDIES


def pending_arms(names: list[str], options) -> list[tuple[runs.Arm, int]]:
    """Arms of the studies ``names`` not trained yet, each once with the most seeds any of the
    studies asks of it (the others take its first seeds), in study order."""
    wanted: dict[str, tuple[runs.Arm, int]] = {}
    for name in names:
        seeds = options.seeds_for(name)
        for arm in (arm.for_engine(options.engine) for arm in STUDIES[name].build(options.quick)[0]):
            identity = arm.key(0, options.seed)
            if identity not in wanted or wanted[identity][1] < seeds:
                wanted[identity] = (arm, seeds)
    counts = options.seed_counts()
    return [(arm, seeds) for arm, seeds in wanted.values()
            if not runs.is_trained(arm, options.root, seeds, options.seed)
            and runs.covering_count(arm, options.root, seeds, options.seed, counts) is None]


def _start_worker(threads: int) -> None:
    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # N workers' weight-loading bars would interleave in one log


def _train(arm: runs.Arm, seeds: int, options) -> list[dict]:
    return runs.train(arm, options.root, seeds, options.seed, options.device)


def train_in_parallel(names: list[str], options, jobs: int, threads: int, log: Callable[[str], None] = print) -> None:
    arms = pending_arms(names, options)
    if not arms:
        return
    log(f"training {len(arms)} arms in {jobs} processes ({threads} thread(s) each)")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_train, arm, seeds, options): arm for arm, seeds in arms}
        for done, future in enumerate(as_completed(futures), 1):
            results = future.result()
            losses = ", ".join(f"{result['final_val_loss']:.4f}" for result in results)
            log(f"[{done}/{len(arms)}] {futures[future].label}: val loss {losses}")
