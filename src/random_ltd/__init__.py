"""random-ltd: random and layerwise token dropping for cheaper transformer training.

    handle = random_ltd.apply(model)      # all layers but the first and the last drop tokens
    handle.set_keep(128)                  # kept tokens per sequence in each dropping layer
"""
__version__ = "0.1.0"

from random_ltd.accounting import (  # noqa: E402
    flops_per_step,
    kept_segments,
    layer_tokens_per_step,
    total_flops,
    total_layer_tokens,
)
from random_ltd.adapters import LayerAdapter, register_family, register_layer, unregister_layer  # noqa: E402
from random_ltd.api import RandomLTDHandle, apply, get_handle, remove  # noqa: E402
from random_ltd.deepspeed_config import DeepSpeedLinear, DeepSpeedRandomLTD, from_deepspeed_config  # noqa: E402
from random_ltd.driver import Driver  # noqa: E402
from random_ltd.errors import ConfigError, RandomLTDError  # noqa: E402
from random_ltd.lr import LayerTokenLR, lr_factor  # noqa: E402
from random_ltd.planner import FlopModel, Plan, Training, build_mod_plan, build_plan, solve_for_saving  # noqa: E402
from random_ltd.schedules import MSLG, ConstantKeep, change_points  # noqa: E402
from random_ltd.strategies import LayerInfo, Strategy, UniformSelection  # noqa: E402

__all__ = [
    "LayerAdapter",
    "RandomLTDError",
    "RandomLTDHandle",
    "LayerInfo",
    "Strategy",
    "UniformSelection",
    "apply",
    "get_handle",
    "register_family",
    "register_layer",
    "remove",
    "unregister_layer",
    "MSLG",
    "ConfigError",
    "ConstantKeep",
    "change_points",
    "DeepSpeedLinear",
    "DeepSpeedRandomLTD",
    "from_deepspeed_config",
    "flops_per_step",
    "kept_segments",
    "layer_tokens_per_step",
    "total_flops",
    "total_layer_tokens",
    "LayerTokenLR",
    "lr_factor",
    "Driver",
    "FlopModel",
    "Plan",
    "Training",
    "build_mod_plan",
    "build_plan",
    "solve_for_saving",
]
