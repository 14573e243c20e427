"""Subprocess entry of the memory measurement: ``python -m random_ltd.bench.memory_worker '<json>'``."""
from __future__ import annotations

import json
import sys

import torch

from random_ltd.bench.config import StackShape
from random_ltd.bench.memory import measure_here


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    if request.get("threads"):
        torch.set_num_threads(request["threads"])
    shape = StackShape(**request["shape"])
    result = measure_here(shape, request["variant"], request["keep"], request["device"], request["dtype"],
                          request.get("seed", 0))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
