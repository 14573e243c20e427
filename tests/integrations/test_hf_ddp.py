"""RandomLTDCallback in a Trainer under DDP: 2 processes (torchrun, gloo), then resumed from a checkpoint.

The Trainer's own resume under DDP on this stack is not bit-exact even without random-LTD (its
data order after the skip differs), so the resumed run is checked on what random-LTD owns: kept
lengths, the LayerToken LR, per-rank seeds and draws; exactness of a resume is checked in
test_hf.py (one process).
"""
from __future__ import annotations

import json

import pytest
from launching import HERE, torchrun


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf_ddp")
    torchrun(HERE / "hf_ddp_worker.py", f"--out={base / 'out.json'}", f"--dir={base / 'run'}", timeout=180)
    result = json.loads((base / "out.json").read_text())
    assert result["world_size"] == 2
    return result["ranks"]


def test_ranks_share_the_kept_length_and_the_learning_rate(ranks):
    for run, kept in (("whole", [8, 16, 24, 32]), ("resumed", [24, 32])):
        logs = [rank[run]["logs"] for rank in ranks]
        assert [log["random_ltd/kept_len"] for log in logs[0]] == kept
        assert logs[0] == logs[1]  # the Trainer logs the mean loss over ranks
    assert [log["learning_rate"] for log in ranks[0]["resumed"]["logs"]] == \
        [log["learning_rate"] for log in ranks[0]["whole"]["logs"][2:]]


def test_ranks_draw_different_indices_with_their_own_seed_also_after_resume(ranks):
    assert ranks[0]["whole"]["seed"] != ranks[1]["whole"]["seed"]
    for rank in ranks:
        assert rank["resumed"]["seed"] == rank["whole"]["seed"]  # not rank 0's, from the checkpoint
        assert len(rank["whole"]["first_kept_indices"][0]) == 8 and len(rank["resumed"]["first_kept_indices"][0]) == 24
    for run in ("whole", "resumed"):
        assert ranks[0][run]["first_kept_indices"] != ranks[1][run]["first_kept_indices"]


def test_parameters_stay_identical_across_ranks(ranks):
    for run in ("whole", "resumed"):
        assert ranks[0][run]["params"] == ranks[1][run]["params"]
