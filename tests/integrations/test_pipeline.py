"""Random-LTD in two pipeline stages (GPipe, 1F1B; with and without checkpointing) against the unsplit model."""
from __future__ import annotations

import json

import pytest
import torch.nn as nn
from launching import HERE, torchrun

import random_ltd
from random_ltd.integrations.pipeline import apply_to_stage
from random_ltd.layer import layer_state

PLAIN, CHECKPOINTED = ("gpipe", "1f1b"), ("gpipe+checkpoint", "1f1b+checkpoint")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pp") / "results.json"
    torchrun(HERE / "pp_worker.py", f"--out={out}", timeout=120)
    return json.loads(out.read_text())


def check_equals_unsplit_model(run):
    assert run["all_params_covered"] and run["max_grad"] > 1e-2
    assert run["max_grad_diff"] < 1e-6
    for losses, reference in zip(run["losses"], run["reference_losses"], strict=True):
        assert losses == pytest.approx(reference, abs=1e-6)


@pytest.mark.parametrize("mode", PLAIN)
def test_pipeline_run_equals_the_unsplit_model_with_the_same_draws(runs, mode):
    check_equals_unsplit_model(runs[mode])


@pytest.mark.parametrize("mode", CHECKPOINTED)
def test_pipeline_with_checkpointing_replays_the_draws_of_each_microbatch(runs, mode):
    """Several microbatches run forward before the first backward: each recompute must redraw its own tokens."""
    assert runs[mode]["replay_matches"] == [True, True]
    check_equals_unsplit_model(runs[mode])


@pytest.mark.parametrize("mode", PLAIN + CHECKPOINTED)
def test_each_stage_draws_for_its_own_layers_and_keeps_the_boundary_shape(runs, mode):
    run = runs[mode]
    assert run["drop_layers"] == [1, 2, 3, 4] and run["stage_drop_layers"] == [[1, 2], [3, 4]]
    assert run["kept_lengths"] == {str(layer): [8] * 4 + [12] * 4 for layer in (1, 2, 3, 4)}
    assert run["microbatches_draw_apart"]
    assert run["boundary_shapes"] == [[2, 16, 32]] * 8  # 4 microbatches x 2 steps, full length between stages


@pytest.mark.parametrize("mode", PLAIN + CHECKPOINTED)
def test_every_stage_counts_the_layer_tokens_of_the_whole_model(runs, mode):
    per_step = [8 * (4 * kept + 2 * 16) for kept in (8, 12)]  # 8 sequences, 4 dropping + 2 full layers
    assert runs[mode]["layer_tokens"] == [sum(per_step)] * 2


class Block(nn.Module):
    def forward(self, hidden):
        return hidden


class StageModule(nn.Module):
    def __init__(self, count):
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(count))


@pytest.fixture
def block_layer():
    random_ltd.register_layer(Block)
    yield
    random_ltd.unregister_layer(Block)


def test_selection_is_read_against_the_whole_stack(block_layer):
    stages = [StageModule(3), StageModule(3), StageModule(2)]  # layers 0-2, 3-5, 6-7 of 8
    handles = [apply_to_stage(stage, first_layer=first, num_layers=8, seed=1)
               for stage, first in zip(stages, (0, 3, 6), strict=True)]
    assert [h.stage_drop_layers for h in handles] == [[1, 2], [3, 4, 5], [6]]
    assert all(h.drop_layers == list(range(1, 7)) and h.num_layers == 8 for h in handles)
    assert [layer_state(stages[1].layers[i]).position for i in range(3)] == [3, 4, 5]
    handles[0].set_keep(4)
    assert handles[0].keep == 4 and handles[0].local.keep == 4


def test_a_stage_without_dropping_layers_still_accounts_for_the_model(block_layer):
    handle = apply_to_stage(StageModule(2), first_layer=0, num_layers=6, layers="2:4", seed=1)
    assert handle.local is None and handle.stage_drop_layers == [] and handle.drop_layers == [2, 3]
    driver = random_ltd.Driver(handle, random_ltd.ConstantKeep(seq_len=10, keep=5), batch_size=2, seq_len=10)
    driver.before_step()
    assert driver.after_step() == 2 * (2 * 5 + 4 * 10)


@pytest.mark.parametrize("first", [-1, 5, True])
def test_stage_range_is_checked(block_layer, first):
    with pytest.raises(random_ltd.RandomLTDError):
        apply_to_stage(StageModule(2), first_layer=first, num_layers=6, seed=1)
