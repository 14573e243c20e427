"""The hashed draw: stream words as tensors that follow the seed, cached tables, the same keys everywhere."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch._dynamo

from random_ltd import ops, rng
from random_ltd.errors import RandomLTDError
from random_ltd.strategies import LayerInfo, UniformSelection

CPU = torch.device("cpu")


def reference_keys(seed: int, stream: int, batch: int, seq_len: int) -> torch.Tensor:
    """The draw as written before stream words became tensors (the numbers docs/results.md rests on)."""
    table = rng.mix32(torch.arange(seq_len) ^ (rng.derive_seed(seed, stream) & 0xFFFFFFFF))
    return rng.mix32(torch.randint(0, rng.KEY_LIMIT, (batch, seq_len)) ^ table)


def pick(selection: UniformSelection, name, tokens: torch.Tensor, keep: int) -> torch.Tensor:
    """``selection``'s kept tokens for a layer named by its stream word (a tensor) or its position."""
    info = LayerInfo(position=name, stream=None) if isinstance(name, int) else LayerInfo(position=-1, stream=name)
    return selection.select(info, tokens, keep, None)


def draw(function, *args):
    """``function(*args)`` from the same state of torch's default generator."""
    torch.manual_seed(3)
    return function(*args)


def test_uniform_keys_are_the_reference_draw():
    for seed, stream in ((0, 0), (5, 1), (2**62, 21)):
        keys = draw(rng.uniform_keys, seed, stream, 4, 37, CPU)
        assert torch.equal(keys, draw(reference_keys, seed, stream, 4, 37))


def test_a_stream_word_is_one_tensor_for_life_and_reseeding_rewrites_it_in_place():
    words = rng.StreamWords(seed=7)
    word = words.word(3)
    assert word.shape == () and word.dtype == torch.int64 and word.device == CPU
    assert int(word) == rng.stream_word(7, 3) and words.word(3) is word
    words.reseed(8)
    assert words.word(3) is word and int(word) == rng.stream_word(8, 3)


@pytest.mark.parametrize("by", ["stream", "position"])
def test_selection_draws_the_reference_keys_by_stream_or_by_position(by):
    selection = UniformSelection(seed=11)
    tokens = torch.zeros(3, 20, 4)
    name = selection.stream(5) if by == "stream" else 5
    kept = draw(pick, selection, name, tokens, 8)
    assert torch.equal(kept, ops.keep_top(draw(reference_keys, 11, 5, 3, 20), 8))


def test_the_eager_table_is_made_once_per_stream_length_and_device_and_forgotten_on_reseed():
    selection = UniformSelection(seed=1)
    words = selection._streams
    word = selection.stream(2)
    table = words.table(word, 16, CPU)
    assert words.table(word, 16, CPU) is table
    assert torch.equal(table, rng.position_table(rng.stream_word(1, 2), 16, CPU))
    selection.seed = 4
    assert torch.equal(words.table(word, 16, CPU), rng.position_table(rng.stream_word(4, 2), 16, CPU))
    tokens = torch.zeros(2, 16, 1)
    assert torch.equal(draw(pick, selection, word, tokens, 5), ops.keep_top(draw(reference_keys, 4, 2, 2, 16), 5))


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda value: pickle.loads(pickle.dumps(value))])
def test_a_copied_selection_has_its_own_words_and_draws_alike(duplicate):
    selection = UniformSelection(seed=9)
    tokens = torch.zeros(2, 12, 1)
    original = draw(pick, selection, selection.stream(4), tokens, 5)
    twin = duplicate(selection)
    assert twin.stream(4) is not selection.stream(4)
    assert torch.equal(draw(pick, twin, twin.stream(4), tokens, 5), original)
    twin.seed = 10
    assert int(selection.stream(4)) == rng.stream_word(9, 4)


def test_a_word_of_another_selection_is_refused():
    mine, other = UniformSelection(seed=1), UniformSelection(seed=2)
    with pytest.raises(RandomLTDError, match="another seed"):
        pick(mine, other.stream(0), torch.zeros(1, 8, 1), 4)


def test_compiled_draw_equals_eager_and_one_graph_serves_every_stream():
    torch._dynamo.reset()
    graphs = []

    def backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    selection = UniformSelection(seed=6)
    tokens = torch.zeros(2, 24, 1)
    compiled = torch.compile(lambda word: pick(selection, word, tokens, 9), backend=backend, fullgraph=True)
    for position in range(12):
        word = selection.stream(position)
        assert torch.equal(draw(compiled, word), ops.keep_top(draw(reference_keys, 6, position, 2, 24), 9))
    assert len(graphs) == 1
    torch._dynamo.reset()


def test_stream_words_stay_on_the_cpu_when_a_model_is_built_under_a_meta_default_device():
    """torchtitan builds (and converts) its model under ``torch.device("meta")``."""
    with torch.device("meta"):
        word = rng.StreamWords(seed=3).word(1)
    assert word.device == CPU and int(word) == rng.stream_word(3, 1)
