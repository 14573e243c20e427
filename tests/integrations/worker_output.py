"""The end every torchrun test worker shares: rank 0 writes its results as JSON, all ranks wait for
that, then leave without the interpreter teardown that gloo can abort (``exit_process``)."""
from __future__ import annotations

import json

import torch.distributed as dist

from random_ltd.integrations.distributed import exit_process


def finish(results: dict, path: str) -> None:
    if dist.get_rank() == 0:
        with open(path, "w") as file:
            json.dump(results, file, indent=1)
    dist.barrier()
    exit_process()
