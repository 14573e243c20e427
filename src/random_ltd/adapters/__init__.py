"""Layer-family adapters and their registry. Built-in families register on import."""
from random_ltd.adapters import diffusers, hf, torch_nn
from random_ltd.adapters.base import (
    LayerAdapter,
    adapter_for,
    register_family,
    register_layer,
    registered_names,
    unregister_layer,
)

diffusers.register_all()
hf.register_all()
torch_nn.register_all()

__all__ = [
    "LayerAdapter",
    "adapter_for",
    "register_family",
    "register_layer",
    "registered_names",
    "unregister_layer",
]
