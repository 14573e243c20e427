"""Random-LTD with Hugging Face Accelerate (any device, any number of processes).

    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_train.py --cpu   # 2 CPU processes
    accelerate launch examples/accelerate_train.py                                      # your accelerate config

On a machine without GPUs, ``--multi_gpu`` is what makes ``accelerate launch`` start the
processes through torchrun, and the script's ``--cpu`` makes them use gloo on the CPU
(accelerate's own ``--cpu`` flag starts one process: its multi-CPU launcher needs MPI).
Random-LTD is applied before ``accelerator.prepare`` with a per-rank seed; the ``Driver`` sets the
kept length once per optimizer step (gradient accumulation included) and steps the LayerToken
LR, which is therefore not passed to ``prepare``. A tiny GPT-2 learns byte-level Python source
from the standard library, so it runs offline.
"""
from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

import torch
import transformers
from accelerate import Accelerator

import random_ltd
from random_ltd.integrations.distributed import exit_process, rank_seed


def byte_sequences(seq_len: int, count: int, seed: int) -> torch.Tensor:
    """``count`` random windows of ``seq_len`` bytes of the standard library's source code."""
    text = b"".join(path.read_bytes() for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-c]*.py")))
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    starts = torch.randint(0, len(data) - seq_len, (count,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([data[s : s + seq_len] for s in starts.tolist()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4, help="sequences per process and micro-batch")
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (gloo between processes)")
    args = parser.parse_args()

    accelerator = Accelerator(cpu=args.cpu, gradient_accumulation_steps=args.grad_accum)
    torch.manual_seed(args.seed)  # the same initial weights in every process
    config = transformers.GPT2Config(n_layer=6, n_embd=64, n_head=4, vocab_size=256, n_positions=args.seq_len)
    model = transformers.GPT2LMHeadModel(config)
    handle = random_ltd.apply(model, seed=rank_seed(args.seed, accelerator.process_index))

    schedule = random_ltd.MSLG(seq_len=args.seq_len, start=32, increment=16, full_at=0.7, total_steps=args.steps)
    global_batch = args.batch * args.grad_accum * accelerator.num_processes
    budget = random_ltd.total_layer_tokens(schedule, args.steps, batch_size=global_batch,
                                           num_layers=handle.num_layers, drop_layers=handle.drop_layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    lr = random_ltd.LayerTokenLR(optimizer, total_layer_tokens=budget, warmup_layer_tokens=budget // 20)
    driver = random_ltd.Driver(handle, schedule, batch_size=global_batch, seq_len=args.seq_len, lr_scheduler=lr)

    data = byte_sequences(args.seq_len, args.steps * args.grad_accum * args.batch,
                          seed=args.seed + accelerator.process_index)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch)  # already this process's share
    model, optimizer = accelerator.prepare(model, optimizer)
    for micro_step, ids in enumerate(loader):
        if micro_step % args.grad_accum == 0:
            driver.before_step()  # one kept length for all micro-batches of the optimizer step
        with accelerator.accumulate(model):
            loss = model(ids.to(accelerator.device), labels=ids.to(accelerator.device)).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            driver.after_step()  # counts layer-tokens and steps the LayerToken LR
            metrics = driver.metrics()
            accelerator.print(f"step {driver.step:3d}  loss {loss.item():.3f}  "
                              f"kept {metrics['random_ltd/kept_len']:3d}  "
                              f"layer-tokens {metrics['random_ltd/layer_tokens']}  lr {metrics['random_ltd/lr']:.2e}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
    exit_process()  # destroys the process group; see its docstring for why a worker leaves this way
