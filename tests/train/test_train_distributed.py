"""``torchrun --nproc-per-node 2 -m random_ltd train``: DDP over gloo on CPU, two real processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from train.fakes import write_corpus

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]  # rendezvous on a port the OS picks


def test_two_ranks_train_in_sync_with_their_own_draws(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    command = [*TORCHRUN, "--nproc-per-node", "2", "-m", "random_ltd", "train", "--quick",
               "--steps", "6", "--data", str(corpus / "*.txt"), "--vocab-size", "300", "--seq-len", "32",
               "--no-progress", "--eval-batches", "1", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("| random_ltd |") == 1, "only rank 0 reports"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    ltd = summary["arms"]["random_ltd"]["seeds"][0]
    base = summary["arms"]["baseline"]["seeds"][0]
    assert ltd["parameters_identical_across_ranks"] and base["parameters_identical_across_ranks"]
    assert len(set(ltd["rank_seeds"])) == 2, "ranks must draw different indices"
    assert ltd["layer_tokens"] < base["layer_tokens"]
    metrics = (out / "random_ltd" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 7, "one writer: step 0 plus six steps, no duplicate lines"
    assert base["tokens"] == 2 * 6 * summary["config"]["batch_size"] * 32, "the driver counts the global batch"
