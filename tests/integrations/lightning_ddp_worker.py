"""Run under ``torchrun --nproc-per-node 2 lightning_ddp_worker.py OUT``: Lightning's DDP strategy
(gloo, CPU) with random-LTD; each rank writes what it saw to OUT/rank<r>.json."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings

import torch

import random_ltd
from random_ltd.integrations.distributed import exit_process
from random_ltd.integrations.lightning import RandomLTDCallback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lightning_module import SEQ, TinyGPT, loader, trainer  # noqa: E402


def main(out: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    module = TinyGPT(dropout=0.0)
    callback = RandomLTDCallback(random_ltd.MSLG(seq_len=SEQ, start=8, increment=8, every_steps=1))
    fit = trainer(out, 4, devices=2, strategy="ddp", callbacks=[callback])
    fit.fit(module, loader(16, batch_size=2))  # the DistributedSampler gives each rank its own half
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in module.model.parameters())).hexdigest()
    result = {"record": module.record, "seed": random_ltd.get_handle(module.model).seed, "parameters": digest}
    with open(os.path.join(out, f"rank{fit.global_rank}.json"), "w") as stream:
        json.dump(result, stream)


if __name__ == "__main__":
    main(sys.argv[1])
    exit_process()  # gloo can abort at interpreter exit (see its docstring)
