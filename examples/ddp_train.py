"""Random-LTD with DistributedDataParallel or FSDP2, launched by torchrun.

    torchrun --nproc-per-node 2 examples/ddp_train.py --steps 30          # DDP
    torchrun --nproc-per-node 2 examples/ddp_train.py --steps 30 --fsdp   # FSDP2, one shard group per layer

gloo on CPU, nccl on GPU. Every rank draws its own token indices (seed derived from the base seed
and the rank), every rank uses the same kept length (the schedule is a function of the step),
and the learning rate follows the layer-tokens consumed. A tiny GPT-2 learns byte-level Python
source from the standard library, so it runs offline.
"""
from __future__ import annotations

import argparse
import os
import sysconfig
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from torch.nn.parallel import DistributedDataParallel

import random_ltd
from random_ltd.integrations.distributed import check_kept_lengths_agree, exit_process, rank_seed, shard_layers


def byte_sequences(seq_len: int, count: int, seed: int) -> torch.Tensor:
    """``count`` random windows of ``seq_len`` bytes of the standard library's source code."""
    text = b"".join(path.read_bytes() for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-c]*.py")))
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    starts = torch.randint(0, len(data) - seq_len, (count,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([data[s : s + seq_len] for s in starts.tolist()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4, help="sequences per rank and step")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--fsdp", action="store_true", help="shard each layer with FSDP2 instead of DDP")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    config = transformers.GPT2Config(n_layer=6, n_embd=64, n_head=4, vocab_size=256, n_positions=args.seq_len)
    model = transformers.GPT2LMHeadModel(config).to(device)

    if args.fsdp:
        shard_layers(model)  # shard first, then apply: random_ltd.remove() can later restore FSDP's classes
        handle = random_ltd.apply(model, seed=rank_seed(args.seed))
        trained = model
    else:
        handle = random_ltd.apply(model, seed=rank_seed(args.seed))
        trained = DistributedDataParallel(model)

    schedule = random_ltd.MSLG(seq_len=args.seq_len, start=args.seq_len // 4, increment=16, full_at=0.7,
                               total_steps=args.steps)
    global_batch = args.batch * world
    budget = random_ltd.total_layer_tokens(schedule, args.steps, batch_size=global_batch,
                                           num_layers=handle.num_layers, drop_layers=handle.drop_layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    lr = random_ltd.LayerTokenLR(optimizer, total_layer_tokens=budget, warmup_layer_tokens=budget // 20)
    driver = random_ltd.Driver(handle, schedule, batch_size=global_batch, seq_len=args.seq_len, lr_scheduler=lr)

    data = byte_sequences(args.seq_len, args.steps * args.batch, seed=args.seed + rank).to(device)
    for step in range(args.steps):
        driver.before_step()
        check_kept_lengths_agree(handle)  # a collective sanity check; drop it in long runs
        ids = data[step * args.batch : (step + 1) * args.batch]
        loss = trained(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        driver.after_step()
        if rank == 0 and (step % 5 == 4 or step == args.steps - 1):
            metrics = driver.metrics()
            print(f"step {step + 1:3d}  loss {loss.item():.3f}  kept {metrics['random_ltd/kept_len']:3d}  "
                  f"layer-tokens {metrics['random_ltd/layer_tokens']}  lr {metrics['random_ltd/lr']:.2e}", flush=True)


if __name__ == "__main__":
    main()
    exit_process()  # destroys the process group; see its docstring for why a worker leaves this way
