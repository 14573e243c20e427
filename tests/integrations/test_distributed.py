"""Random-LTD under DDP and FSDP2: 2 processes, gloo, checked against a single-process reference."""
from __future__ import annotations

import json

import pytest
import torch
import transformers
from launching import HERE, torchrun

import random_ltd
from random_ltd.integrations.distributed import check_kept_lengths_agree, load_rank_state, rank_seed

MODES = ("ddp", "fsdp_shard_then_apply", "fsdp_apply_then_shard", "fsdp_apply_then_raw_fully_shard")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "results.json"
    torchrun(HERE / "dist_worker.py", f"--out={out}", f"--modes={','.join(MODES)}", timeout=180)
    return json.loads(out.read_text())


@pytest.mark.parametrize("mode", MODES)
def test_matches_single_process_reference(runs, mode):
    run = runs[mode]
    assert runs["world_size"] == 2
    assert run["max_param_change"] > 1e-3  # training moved the parameters
    assert run["max_param_diff_vs_reference"] < 1e-5
    assert run["max_param_diff_across_ranks"] == 0.0


@pytest.mark.parametrize("mode", MODES)
def test_ranks_draw_different_indices_at_the_same_kept_length(runs, mode):
    run = runs[mode]
    assert run["kept"][0] == run["kept"][1] == [8, 16, 24, 32]
    assert [shape[1] for shape in run["probe_shapes"]] == [8, 16, 24, 32]  # tokens a middle layer saw
    assert run["probe_step0_differs_across_ranks"]  # same batch on both ranks, different kept tokens
    assert all(torch.isfinite(torch.tensor(losses)).all() for losses in run["losses"])


def test_remove_restores_the_sharded_class_when_sharded_with_shard_layers(runs):
    assert runs["ddp"]["layer_classes_after_remove"] == ["GPT2Block"]
    for mode in ("fsdp_shard_then_apply", "fsdp_apply_then_shard"):
        assert runs[mode]["layer_classes_after_remove"] == ["FSDPGPT2Block"]


def test_rank_seed_is_deterministic_and_distinct_per_rank():
    seeds = [rank_seed(7, rank) for rank in range(64)]
    assert len(set(seeds)) == 64
    assert seeds == [rank_seed(7, rank) for rank in range(64)]
    assert rank_seed(8, 0) != rank_seed(7, 0)
    assert rank_seed(7) == rank_seed(7, 0)  # not distributed: rank 0


@pytest.mark.parametrize("bad", [(-1, 0), (1.5, 0), (True, 0), (1, -1), (1, "0")])
def test_rank_seed_rejects_bad_input(bad):
    with pytest.raises(random_ltd.RandomLTDError):
        rank_seed(*bad)


def test_kept_length_check_without_process_group_returns_the_kept_length():
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50))
    handle = random_ltd.apply(model, keep=5)
    assert check_kept_lengths_agree(handle) == 5



def test_load_rank_state_restores_the_counters_but_keeps_this_ranks_seed():
    def driver_for(rank):
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=4, n_embd=16, n_head=2, vocab_size=50))
        handle = random_ltd.apply(model, seed=rank_seed(9, rank))
        return model, random_ltd.Driver(handle, random_ltd.MSLG(seq_len=12, start=4, increment=4, every_steps=1),
                                        batch_size=4, seq_len=12)

    model0, driver0 = driver_for(0)
    for _ in range(2):
        driver0.before_step()
        model0(torch.randint(0, 50, (2, 12)))
        driver0.after_step()
    _, driver1 = driver_for(1)
    load_rank_state(driver1, driver0.state_dict())
    assert driver1.handle.seed == rank_seed(9, 1)
    assert driver1.handle.keep == driver0.handle.keep
    assert (driver1.step, driver1.layer_tokens, driver1.before_step()) == (2, driver0.layer_tokens, 12)
