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
"""
from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1
_MASK32 = 0xFFFFFFFF
KEY_LIMIT = 1 << 32  # every key is below this; a key equal to it is chosen before any drawn key


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


def uniform_keys(seed: int, stream: int, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """``(batch, seq_len)`` int64 sort keys in ``[0, KEY_LIMIT)``, i.i.d. uniform in effect.

    Consumes ``batch * seq_len`` values of torch's default generator of ``device``; ``seed``
    and ``stream`` (a layer's position) select a per-position hash table mixed into them.
    """
    table = mix32(torch.arange(seq_len, device=device) ^ (derive_seed(seed, stream) & _MASK32))
    drawn = torch.randint(0, KEY_LIMIT, (batch, seq_len), device=device)
    return mix32(drawn ^ table)

