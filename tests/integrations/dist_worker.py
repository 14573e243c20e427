"""Run under ``torchrun --nproc-per-node 2``: random-LTD with DDP and FSDP2 (gloo, CPU).

For each mode, trains a tiny GPT-2 for a few steps with a growing kept length and compares the
result with a single-process reference: one local replica per rank (each with that rank's seed
and batches), gradients averaged by hand, the same optimizer step applied to all replicas.
Rank 0 writes what every rank measured to the JSON file named by ``--out``.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.distributed as dist
import transformers
from torch.nn.parallel import DistributedDataParallel
from worker_output import finish

import random_ltd
from random_ltd.integrations.distributed import check_kept_lengths_agree, rank_seed, shard_layers

SEQ, BATCH, VOCAB, STEPS, BASE_SEED = 32, 2, 101, 4, 1234
SCHEDULE = random_ltd.MSLG(seq_len=SEQ, start=8, increment=8, every_steps=1)  # 8, 16, 24, 32 (full)
MODES = ("ddp", "fsdp_shard_then_apply", "fsdp_apply_then_shard", "fsdp_apply_then_raw_fully_shard")


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=SEQ,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).train()


def batch(rank: int, step: int) -> torch.Tensor:
    """Step 0 feeds every rank the same batch, so different draws show as different kept tokens."""
    generator = torch.Generator().manual_seed(1000 * step + (rank if step else 0))
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator)


def prepare(mode: str, model: torch.nn.Module, rank: int):
    if mode == "ddp":
        handle = random_ltd.apply(model, seed=rank_seed(BASE_SEED, rank))
        return DistributedDataParallel(model), handle
    if mode == "fsdp_shard_then_apply":
        shard_layers(model)
        return model, random_ltd.apply(model, seed=rank_seed(BASE_SEED, rank))
    handle = random_ltd.apply(model, seed=rank_seed(BASE_SEED, rank))
    if mode == "fsdp_apply_then_shard":
        shard_layers(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model.transformer.h:
            fully_shard(layer)
        fully_shard(model)
    return model, handle


def train_distributed(mode: str, rank: int) -> dict:
    model = build_model()
    probe: list[torch.Tensor] = []
    model.transformer.h[1].ln_1.register_forward_hook(lambda module, args, out: probe.append(args[0].detach().clone()))
    wrapped, handle = prepare(mode, model, rank)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    driver = random_ltd.Driver(handle, SCHEDULE, batch_size=BATCH * dist.get_world_size(), seq_len=SEQ)
    losses, kept = [], []
    for step in range(STEPS):
        kept.append(driver.before_step())
        check_kept_lengths_agree(handle)
        ids = batch(rank, step)
        loss = wrapped(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        driver.after_step()
        losses.append(loss.item())
    return {"model": model, "handle": handle, "losses": losses, "kept": kept,
            "probe_shapes": [list(p.shape) for p in probe], "probe0": probe[0]}


def full_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for name, p in model.named_parameters()}


def train_reference(world_size: int) -> dict[str, torch.Tensor]:
    """What data-parallel random-LTD must compute, without torch.distributed.

    Each replica gets its own copy of torch's default stream (as each rank has its own process),
    starting where every rank's starts: right after ``build_model``.
    """
    base = build_model()
    streams = [torch.get_rng_state() for _ in range(world_size)]
    replicas = [copy.deepcopy(base) for _ in range(world_size)]
    handles = [random_ltd.apply(m, seed=rank_seed(BASE_SEED, r)) for r, m in enumerate(replicas)]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in replicas]
    for step in range(STEPS):
        for rank, (model, handle) in enumerate(zip(replicas, handles, strict=True)):
            handle.set_keep(SCHEDULE(step) if SCHEDULE(step) < SEQ else None)
            ids = batch(rank, step)
            torch.set_rng_state(streams[rank])
            model(ids, labels=ids).loss.backward()
            streams[rank] = torch.get_rng_state()
        for params in zip(*(m.parameters() for m in replicas), strict=True):
            mean = torch.stack([p.grad for p in params]).mean(0)
            for p in params:
                p.grad = mean.clone()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    return {name: p.detach().clone() for name, p in replicas[0].named_parameters()}


def gather(value):
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def run_mode(mode: str, rank: int, reference: dict[str, torch.Tensor]) -> dict:
    result = train_distributed(mode, rank)
    params = full_parameters(result["model"])
    flat = torch.cat([p.reshape(-1) for p in params.values()])
    all_flat = gather(flat)
    all_probe0 = gather(result["probe0"])
    try:
        random_ltd.remove(result["model"])
        layer_classes = sorted({type(layer).__name__ for layer in result["model"].transformer.h})
    except random_ltd.RandomLTDError as error:  # a core check may refuse to strip FSDP's class
        layer_classes = [f"refused: {error}"]
    initial = build_model().state_dict()
    return {
        "losses": gather(result["losses"]),
        "kept": gather(result["kept"]),
        "probe_shapes": result["probe_shapes"],
        "probe_step0_differs_across_ranks": not torch.equal(all_probe0[0], all_probe0[1]),
        "max_param_diff_across_ranks": max((f - all_flat[0]).abs().max().item() for f in all_flat),
        "max_param_diff_vs_reference": max((params[n] - reference[n]).abs().max().item() for n in reference),
        "max_param_change": max((params[n] - initial[n]).abs().max().item() for n in reference),
        "layer_classes_after_remove": layer_classes,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    reference = train_reference(dist.get_world_size())
    results = {mode: run_mode(mode, rank, reference) for mode in args.modes.split(",")}
    results["world_size"] = dist.get_world_size()
    finish(results, args.out)


if __name__ == "__main__":
    main()
