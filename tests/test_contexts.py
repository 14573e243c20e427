"""Per-forward contexts found again by checkpoint replays: by the input's storage, freed with it."""
from __future__ import annotations

import gc
import os

import pytest
import torch
import torch.distributed as dist

from random_ltd.contexts import ForwardContexts
from random_ltd.errors import RandomLTDError


def _fresh_call(contexts: ForwardContexts, context, hidden: torch.Tensor, position: int = 1):
    """One forward of the model: it begins, its layer runs on ``hidden``, it ends."""
    contexts.begin(context)
    found = contexts.for_layer(position, hidden)
    contexts.end()
    return found


def test_replays_find_their_forward_through_detach_and_views_in_any_order():
    contexts = ForwardContexts()
    first, second = torch.randn(2, 8, 4), torch.randn(2, 8, 4)
    assert _fresh_call(contexts, "A", first) == "A"
    assert _fresh_call(contexts, "B", second) == "B"
    assert contexts.for_layer(1, second.detach()) == "B"  # reentrant checkpointing replays on a detached input
    assert contexts.for_layer(1, first) == "A"  # non-reentrant: the same tensor
    assert contexts.for_layer(1, first.detach().view(2, 8, 4)) == "A"


def test_positions_and_offsets_are_kept_apart():
    contexts = ForwardContexts()
    buffer = torch.randn(2, 2, 8, 4)
    contexts.begin("A")
    contexts.for_layer(1, buffer[0])
    contexts.begin("B")
    contexts.for_layer(1, buffer[1])
    contexts.for_layer(2, buffer[0])
    contexts.end()
    assert [contexts.for_layer(1, buffer[0]), contexts.for_layer(1, buffer[1]), contexts.for_layer(2, buffer[0])] \
        == ["A", "B", "B"]


def test_entries_leave_with_their_tensors_and_need_no_capacity():
    contexts = ForwardContexts()
    inputs = [torch.randn(1, 4, 2) for _ in range(5000)]
    for index, hidden in enumerate(inputs):
        _fresh_call(contexts, index, hidden)
    assert len(contexts) == 5000
    assert all(contexts.for_layer(1, hidden.detach()) == index for index, hidden in enumerate(inputs))
    del inputs, hidden
    gc.collect()
    assert len(contexts) == 0


def test_a_layer_called_twice_in_one_forward_gets_the_forward_context_both_times():
    contexts = ForwardContexts()
    contexts.begin("A")
    first, second = torch.randn(2, 3), torch.randn(2, 3)
    assert contexts.for_layer(1, first) == "A"
    assert contexts.for_layer(1, second) == "A"  # a layer shared by two positions of the stack
    contexts.end()
    assert contexts.for_layer(1, second) == "A"


def test_a_replay_after_an_evaluation_forward_gets_its_own_context():
    """Evaluation forwards begin too (with no context) and call no dropping layer."""
    contexts = ForwardContexts()
    hidden = torch.randn(2, 8, 4)
    _fresh_call(contexts, "A", hidden)
    contexts.begin(None)
    contexts.end()
    assert contexts.for_layer(1, hidden.detach()) == "A"


def test_a_layer_called_outside_any_forward_is_an_error():
    """E.g. a wrapper calling ``model.forward`` directly: the model's hooks never ran."""
    contexts = ForwardContexts()
    _fresh_call(contexts, "A", torch.randn(2, 3))
    with pytest.raises(RandomLTDError, match="outside a forward of the model"):
        contexts.for_layer(1, torch.randn(2, 3))


def test_a_replay_that_cannot_tell_two_forwards_apart_is_refused():
    """The same input tensor in two forwards before the first one's backward: refuse, never guess."""
    contexts = ForwardContexts()
    shared = torch.randn(2, 8, 4)
    _fresh_call(contexts, "A", shared)
    _fresh_call(contexts, "B", shared)
    with pytest.raises(RandomLTDError, match="cannot tell which forward"):
        contexts.for_layer(1, shared.detach())


def test_reusing_an_input_after_its_replay_is_fine():
    """A training loop over one fixed input tensor: forward, backward (replay), forward, ..."""
    contexts = ForwardContexts()
    shared = torch.randn(2, 8, 4)
    for step in range(3):
        assert _fresh_call(contexts, step, shared) == step
        assert contexts.for_layer(1, shared.detach()) == step


@pytest.fixture(scope="module")
def one_process_mesh():
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,), mesh_dim_names=("tp",))
    dist.destroy_process_group()


def test_sequence_parallel_hidden_states_are_keyed_by_their_local_shard(one_process_mesh):
    """A replay gets the DTensor checkpointing saved (or its detach), never the all-gathered copy."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    contexts = ForwardContexts()
    first = DTensor.from_local(torch.randn(2, 8, 4), one_process_mesh, [Shard(1)])
    second = DTensor.from_local(torch.randn(2, 8, 4), one_process_mesh, [Shard(1)])
    _fresh_call(contexts, "A", first)
    _fresh_call(contexts, "B", second)
    gathered = first.redistribute(one_process_mesh, [Replicate()]).to_local().clone()  # a fresh buffer
    assert contexts.for_layer(1, first.detach()) == "A" and contexts.for_layer(1, second) == "B"
    with pytest.raises(RandomLTDError, match="outside a forward"):  # a buffer made after the forward is no key
        contexts.for_layer(1, gathered)


class _Mixing(torch.nn.Module):
    """A parameter-free layer that mixes tokens (a DTensor-friendly stand-in for attention)."""

    def forward(self, x):
        return x + x.mean(dim=1, keepdim=True).tanh() * x.sin()


class _ShardedStack(torch.nn.Module):
    """Embeddings -> sequence-sharded DTensor hidden states -> checkpointed layers -> head."""

    def __init__(self, mesh, reentrant):
        super().__init__()
        self.mesh, self.reentrant = mesh, reentrant
        self.embed, self.head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 20)
        self.layers = torch.nn.ModuleList(_Mixing() for _ in range(4))

    def forward(self, input_ids):
        from torch.distributed.tensor import DTensor, Shard
        from torch.utils.checkpoint import checkpoint

        x = DTensor.from_local(self.embed(input_ids), self.mesh, [Shard(1)], run_check=False)
        for layer in self.layers:
            x = layer(x) if self.reentrant is None else checkpoint(layer, x, use_reentrant=self.reentrant)
        return self.head(x.to_local())


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_protect_ids_replayed_under_sequence_parallelism_give_the_uncheckpointed_gradients(one_process_mesh,
                                                                                           reentrant):
    """Forward A, forward B, backward B, backward A with DTensor hidden states between the layers."""
    import random_ltd

    random_ltd.register_layer(_Mixing)
    try:
        grads = {}
        for checkpointing in (None, reentrant):
            torch.manual_seed(0)
            model = _ShardedStack(one_process_mesh, checkpointing).train()
            random_ltd.apply(model, keep=4, seed=3, protect_ids=(1, 2))
            torch.manual_seed(1)
            batches = [torch.randint(3, 20, (2, 12), generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
            batches[0][:, 5], batches[1][:, 9] = 1, 2  # protected positions differ between the forwards
            first, second = (model(ids).square().mean() for ids in batches)
            second.backward()
            first.backward()
            grads[checkpointing] = [p.grad.clone() for p in model.parameters()]
        for got, want in zip(grads[reentrant], grads[None], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    finally:
        random_ltd.unregister_layer(_Mixing)
