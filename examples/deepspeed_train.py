"""Random-LTD inside a DeepSpeed engine, configured by an existing DeepSpeed JSON.

    torchrun --nproc-per-node 2 examples/deepspeed_train.py --config examples/deepspeed_config.json

(``deepspeed --num_gpus 2 examples/deepspeed_train.py ...`` on GPUs.) The config's
``data_efficiency.data_routing.random_ltd`` section sets the dropping layers and the kept-length
schedule; random-ltd runs them in pure PyTorch (DeepSpeed's own random-LTD needs CUDA kernels).
A tiny GPT-2 learns byte-level Python source from the standard library, so it runs offline.
"""
from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import transformers

import random_ltd
from random_ltd.integrations.deepspeed import EngineClock, apply_from_config, layer_token_lr, split_config
from random_ltd.integrations.distributed import exit_process


def byte_sequences(seq_len: int, count: int, seed: int) -> torch.Tensor:
    """``count`` random windows of ``seq_len`` bytes of the standard library's source code."""
    text = b"".join(path.read_bytes() for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-c]*.py")))
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    starts = torch.randint(0, len(data) - seq_len, (count,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([data[s : s + seq_len] for s in starts.tolist()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="examples/deepspeed_config.json")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    settings, ds_config = split_config(args.config)  # DeepSpeed gets the config with its own random-LTD off
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    config = transformers.GPT2Config(n_layer=settings.num_layers, n_embd=64, n_head=4, vocab_size=256,
                                     n_positions=settings.seq_len)
    model = transformers.GPT2LMHeadModel(config)
    handle = apply_from_config(model, settings, seed=args.seed)  # each rank draws its own indices

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    driver = random_ltd.Driver(handle, settings.schedule, batch_size=engine.train_batch_size(),
                               seq_len=settings.seq_len, lr_scheduler=layer_token_lr(optimizer, settings))
    clock = EngineClock(engine, driver)

    micro_steps = args.steps * engine.gradient_accumulation_steps()
    micro_batch = engine.train_micro_batch_size_per_gpu()
    data = byte_sequences(settings.seq_len, micro_steps * micro_batch, seed=args.seed + dist.get_rank())
    for micro_step in range(micro_steps):
        clock.before_forward()
        ids = data[micro_step * micro_batch : (micro_step + 1) * micro_batch].to(engine.device)
        loss = engine(ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        if clock.after_engine_step() and dist.get_rank() == 0:
            metrics = driver.metrics()
            print(f"step {driver.step:3d}  loss {loss.item():.3f}  kept {metrics['random_ltd/kept_len']:3d}  "
                  f"layer-tokens {metrics['random_ltd/layer_tokens']}  lr {metrics['random_ltd/lr']:.2e}", flush=True)


if __name__ == "__main__":
    main()
    exit_process()  # destroys the process group; see its docstring for why a worker leaves this way
