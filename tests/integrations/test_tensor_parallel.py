"""Random-LTD under tensor and sequence parallelism: 2 processes (one TP group), gloo, against one process."""
from __future__ import annotations

import json

import pytest
from launching import HERE, torchrun

import random_ltd
from random_ltd.integrations.distributed import rank_seed
from random_ltd.integrations.tensor_parallel import data_parallel_index, mesh_rank_seed

MODES = ("tp", "sp", "hf_tp_plan")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp") / "results.json"
    torchrun(HERE / "tp_worker.py", f"--out={out}", timeout=120)
    return json.loads(out.read_text())


@pytest.mark.parametrize("mode", MODES)
def test_tensor_parallel_run_equals_the_single_process_run(runs, mode):
    run = runs[mode]
    assert run["same_kept_as_reference"] and run["kept_lengths"] == [8, 12, 16]
    assert run["losses"] == pytest.approx(run["reference_losses"], abs=1e-6)
    assert run["max_grad"] > 1e-2 and run["max_grad_diff"] < 1e-6


@pytest.mark.parametrize("mode", MODES)
def test_ranks_of_a_tensor_parallel_group_keep_the_same_tokens(runs, mode):
    assert runs[mode]["kept_same_on_tp_ranks"]


def test_sequence_parallel_layers_receive_dtensors(runs):
    assert runs["sp"]["hidden_types"] == ["DTensor"]  # the SP path of the dropping layer ran
    assert runs["tp"]["hidden_types"] == ["Tensor"]
    assert runs["hf_tp_plan"]["sharded"]


def test_sequence_parallel_rejects_a_kept_length_the_degree_does_not_divide(runs):
    assert "kept length 7 is not divisible by the sequence-parallel degree 2" in runs["sp_indivisible"]


def test_mesh_seeds_follow_the_data_parallel_coordinate(runs):
    assert runs["seeds"]["tp2"][0] == runs["seeds"]["tp2"][1]
    assert runs["seeds"]["dp2"][0] != runs["seeds"]["dp2"][1]


class FakeMesh:
    """The three DeviceMesh methods data_parallel_index reads, for meshes larger than this machine runs."""

    def __init__(self, names, sizes, coordinate):
        self.mesh_dim_names, self.sizes, self.coordinate = names, sizes, coordinate

    def size(self, dim):
        return self.sizes[dim]

    def get_local_rank(self, name):
        return self.coordinate[self.mesh_dim_names.index(name)]


def test_data_parallel_index_flattens_several_dimensions_and_ignores_the_others():
    names, sizes = ("dp_replicate", "dp_shard", "tp"), (2, 3, 4)
    indices = {(r, s, t): data_parallel_index(FakeMesh(names, sizes, (r, s, t)), ("dp_replicate", "dp_shard"))
               for r in range(2) for s in range(3) for t in range(4)}
    assert sorted(set(indices.values())) == list(range(6))
    assert all(indices[(r, s, t)] == indices[(r, s, 0)] for r, s, t in indices)
    mesh = FakeMesh(names, sizes, (1, 2, 3))
    assert mesh_rank_seed(5, mesh, ("dp_replicate", "dp_shard")) == rank_seed(5, 5)


@pytest.mark.parametrize("dims", ["pp", ("dp", "cp"), ()])
def test_data_parallel_index_rejects_unknown_dimensions(dims):
    with pytest.raises(random_ltd.RandomLTDError, match="not in this mesh"):
        data_parallel_index(FakeMesh(("dp", "tp"), (2, 2), (0, 0)), dims)
