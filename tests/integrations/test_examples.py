"""The examples not already run by the README tests."""
from __future__ import annotations

from launching import REPO, check_training_log, torchrun

import random_ltd


def test_fsdp2_example_trains_with_growing_kept_length_and_layer_token_lr():
    steps = 10
    done = torchrun(REPO / "examples" / "ddp_train.py", f"--steps={steps}", "--fsdp", "--seq-len=64", timeout=180)
    schedule = random_ltd.MSLG(seq_len=64, start=16, increment=16, full_at=0.7, total_steps=steps)
    rows = check_training_log(done.stdout, schedule, steps=steps, batch_size=4 * 2, num_layers=6,
                              drop_layers=[1, 2, 3, 4], every=5)
    assert rows[-1][4] == 0.0 and rows[0][4] > 0.0  # the LayerToken LR ends exactly with the planned budget
