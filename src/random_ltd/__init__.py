"""random-ltd: random and layerwise token dropping for cheaper transformer training.

    handle = random_ltd.apply(model)      # all layers but the first and the last drop tokens
    handle.set_keep(128)                  # kept tokens per sequence in each dropping layer
"""
__version__ = "0.1.0"

from random_ltd.adapters import LayerAdapter, register_family, register_layer, unregister_layer  # noqa: E402
from random_ltd.surgery import RandomLTDError, RandomLTDHandle, apply, get_handle, remove  # noqa: E402

__all__ = [
    "LayerAdapter",
    "RandomLTDError",
    "RandomLTDHandle",
    "apply",
    "get_handle",
    "register_family",
    "register_layer",
    "remove",
    "unregister_layer",
]
