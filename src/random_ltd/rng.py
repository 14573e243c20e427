"""Where random-LTD's randomness comes from: torch's default generator, mixed with a seed.

Each dropping layer draws its sort keys from torch's *default* generator of the hidden states'
device, the stream dropout uses, and hashes them with the layer's seed (``apply``'s seed and
the layer's position). Why the default generator: gradient checkpointing saves and restores it
around a replayed forward (as it must for dropout), so a recomputed layer draws exactly the keys
of the forward it replays, whatever the order of forwards and backwards (several forwards, then
one backward of their sum; forward A, forward B, backward B, backward A). A private counter or
generator moves on between the forward and its replay and would silently change the draw.
Why the seed on top: ranks that share a default stream (data-parallel ranks are usually seeded
alike) still draw different tokens when their seeds differ, and ranks of a tensor-parallel group
draw alike when their seeds agree.

The hash is integer tensor arithmetic on the device (no host sync, traceable by
``torch.compile``): 32-bit words held in int64, multiplied by constants below 2**31 so that no
product overflows.

A layer's seed reaches the draw as a 0-d tensor (``StreamWords``), not as a Python int: Dynamo
specialises on every int it reads, so an int per layer would compile one graph per layer of the
shared ``forward`` and a deep model compiled block by block would hit the recompile limit.
"""
from __future__ import annotations

import torch

from random_ltd.errors import RandomLTDError

_MASK64 = (1 << 64) - 1
_MASK32 = 0xFFFFFFFF
KEY_LIMIT = 1 << 32  # every key is below this; a key equal to it is chosen before any drawn key
_TABLE_LIMIT = 4096  # cached position tables (layers x lengths x devices) before the cache starts over


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def derive_seed(*counters: int) -> int:
    """Mix integers into one well-spread 63-bit seed (splitmix64 chained over the inputs)."""
    state = 0
    for counter in counters:
        state = _splitmix64(state ^ (counter & _MASK64))
    return state >> 1


def mix32(words: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (xorshift-multiply rounds) of int64 tensors in [0, 2**32)."""
    words = words ^ (words >> 16)
    words = (words * 0x7FEB352D) & _MASK32
    words = words ^ (words >> 15)
    words = (words * 0x2C1B3C6D) & _MASK32
    return words ^ (words >> 16)


def stream_word(seed: int, stream: int) -> int:
    """The 32-bit word of one stream (a layer's position) under ``seed``."""
    return derive_seed(seed, stream) & _MASK32


def position_table(word: int | torch.Tensor, seq_len: int, device: torch.device) -> torch.Tensor:
    """``(seq_len,)``: each position hashed with a stream's word (an int, or a 0-d int64 tensor)."""
    return mix32(torch.arange(seq_len, device=device) ^ word)


def keys_from_table(table: torch.Tensor, batch: int) -> torch.Tensor:
    """``(batch, seq_len)`` keys: ``batch * seq_len`` values of the default generator of the table's
    device, mixed with the table."""
    drawn = torch.randint(0, KEY_LIMIT, (batch, table.shape[0]), device=table.device)
    return mix32(drawn ^ table)


def uniform_keys(seed: int, stream: int, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """``(batch, seq_len)`` int64 sort keys in ``[0, KEY_LIMIT)``, i.i.d. uniform in effect.

    Consumes ``batch * seq_len`` values of torch's default generator of ``device``; ``seed``
    and ``stream`` (a layer's position) select a per-position hash table mixed into them.
    """
    return keys_from_table(position_table(stream_word(seed, stream), seq_len, device), batch)


class StreamWords:
    """The word of each stream under one seed, as 0-d int64 CPU tensors kept for the object's life.

    ``word(stream)`` always returns the same tensor for a stream; ``reseed`` rewrites them in place,
    so a layer holding its tensor reads the current seed's word without being told. Traced code
    reads the tensor as a graph input: no guard on its value, and a 0-d CPU tensor is a scalar to
    kernels on any device (no copy to the device, no sync).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._words: dict[int, torch.Tensor] = {}
        self._streams_by_id: dict[int, int] = {}
        self._tables: dict[tuple, torch.Tensor] = {}

    def word(self, stream: int) -> torch.Tensor:
        word = self._words.get(stream)
        if word is None:
            word = self._words[stream] = torch.tensor(stream_word(self.seed, stream), dtype=torch.int64, device="cpu")
            self._streams_by_id[id(word)] = stream
        return word

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self._tables.clear()
        for stream, word in self._words.items():
            word.fill_(stream_word(seed, stream))

    def table(self, word: torch.Tensor, seq_len: int, device: torch.device) -> torch.Tensor:
        """``position_table`` of one of this object's words. Eager calls reuse it per (stream,
        length, device): it is made on the device once, not every step; compiled code makes it in
        the graph, where it fuses with the draw (a cache lookup there would be a guard per layer)."""
        if torch.compiler.is_compiling():
            return position_table(word, seq_len, device)
        stream = self._streams_by_id.get(id(word))
        if stream is None:
            raise RandomLTDError("this stream word belongs to another seed's StreamWords")
        key = (stream, seq_len, device)
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= _TABLE_LIMIT:
                self._tables.clear()
            table = self._tables[key] = position_table(word, seq_len, device)
        return table

    def __getstate__(self) -> dict:
        return {"seed": self.seed, "_words": self._words}  # tables and ids are rebuilt: ids change in a copy

    def __setstate__(self, state: dict) -> None:
        self.seed, self._words, self._tables = state["seed"], state["_words"], {}
        self._streams_by_id = {id(word): stream for stream, word in self._words.items()}

