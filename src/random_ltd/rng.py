"""Counter-based seeding: each layer's indices are a pure function of (seed, layer, forward count).

Why not one stateful generator per layer: gradient checkpointing runs a layer's forward twice
(once more during backward) and restores only the global RNG; a stateful generator would draw
different indices on the replay and silently corrupt the gradients. Deriving the seed from
explicit counters makes the replay draw the same indices, keeps layers independent of the
order they run in, and makes resume a matter of restoring two integers.
"""
from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


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


class GeneratorPool:
    """One ``torch.Generator`` per device, reseeded on every use (allocation happens once)."""

    def __init__(self) -> None:
        self._by_device: dict[torch.device, torch.Generator] = {}

    def seeded(self, device: torch.device, seed: int) -> torch.Generator:
        generator = self._by_device.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            self._by_device[device] = generator
        generator.manual_seed(seed)
        return generator
