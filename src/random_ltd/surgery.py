"""``apply`` / ``remove``: find a model's stack of transformer layers by class and wrap a selection."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import torch
import torch.nn as nn

from random_ltd import adapters
from random_ltd.adapters import moe
from random_ltd.errors import RandomLTDError
from random_ltd.layer import DropControl, check_unwrappable, is_wrapped, layer_state, unwrap_layer, wrap_layer

_HANDLE_ATTR = "_random_ltd_handle"
LayerSelection = str | Sequence[int]


@dataclasses.dataclass(frozen=True)
class WrappedLayer:
    index: int
    name: str
    family: str


def parse_layer_selection(selection: LayerSelection, num_layers: int) -> list[int]:
    """``"1:-1"``, ``"::2"``, ``"3"`` or a list of indices (negative allowed) -> sorted indices."""
    if isinstance(selection, str):
        text = selection.strip()
        try:
            if ":" in text:
                parts = [int(p) if p.strip() else None for p in text.split(":")]
                if len(parts) > 3:
                    raise ValueError
                chosen = list(range(num_layers))[slice(*parts)]
            else:
                chosen = [_check_index(int(p), num_layers) for p in text.split(",") if p.strip()]
        except ValueError as error:
            if isinstance(error, RandomLTDError):
                raise
            raise RandomLTDError(
                f"layers={selection!r} is not a slice like '1:-1' or '::2', nor a comma-separated list of indices"
            ) from None
    else:
        chosen = [_check_index(int(i), num_layers) for i in selection]
    chosen = sorted(set(chosen))
    if not chosen:
        raise RandomLTDError(f"layers={selection!r} selects no layer of a stack of {num_layers}")
    return chosen


def _check_index(index: int, num_layers: int) -> int:
    if not -num_layers <= index < num_layers:
        raise RandomLTDError(f"layer index {index} is out of range for a stack of {num_layers} layers")
    return index % num_layers


def find_layer_stack(model: nn.Module, stack: str | None = None) -> tuple[str, list[tuple[str, nn.Module]]]:
    """The model's transformer layers, found by registered class and grouped by parent container.

    Returns ``(stack_name, [(name, layer), ...])`` in execution order. With several stacks
    (encoder-decoder models) ``stack`` names the one to use.
    """
    groups: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        if name and adapters.adapter_for(type(module)) is not None and not _inside_registered(name, groups):
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            groups.setdefault(parent, []).append((name, module))
    if not groups:
        raise RandomLTDError(
            f"found no transformer layer of a registered class in {type(model).__name__}. "
            "Register your layer class with random_ltd.register_layer(MyLayer) "
            "(add masks=(...), positions=(...) if its forward takes them); "
            f"registered: {', '.join(adapters.registered_names())}"
        )
    if stack is not None:
        if stack not in groups:
            raise RandomLTDError(f"stack={stack!r} not found; layer stacks in this model: {sorted(groups)}")
        return stack, groups[stack]
    if len(groups) > 1:
        raise RandomLTDError(f"this model has several layer stacks {sorted(groups)}: choose one with stack=...")
    return next(iter(groups.items()))


def _inside_registered(name: str, groups: dict[str, list]) -> bool:
    return any(name.startswith(layer_name + ".") for members in groups.values() for layer_name, _ in members)


class RandomLTDHandle:
    """What ``apply`` returns: sets the kept length and reports what was wrapped.

    ``set_keep(k)`` applies to every wrapped layer; ``None`` or ``k >= s`` disables dropping.
    Indices depend on ``seed``, the layer's position and the number of forward passes of the
    model, which ``state_dict`` carries so that a resumed run draws the same indices.
    """

    def __init__(self, model: nn.Module, stack_name: str, layers: list[WrappedLayer], num_layers: int, control: DropControl):
        self.model = model
        self.stack_name = stack_name
        self.layers = layers
        self.num_layers = num_layers
        self._control = control
        self._hook = model.register_forward_pre_hook(self._count_forward)
        self.router_loss: moe.RouterLoss | None = None

    def _count_forward(self, module, args) -> None:
        if module.training:
            self._control.forward_count += 1

    @property
    def keep(self) -> int | None:
        return self._control.keep

    @property
    def seed(self) -> int:
        return self._control.seed

    @property
    def drop_layers(self) -> list[int]:
        return [layer.index for layer in self.layers]

    def set_keep(self, keep: int | None) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep <= 0):
            raise RandomLTDError(f"kept length must be a positive integer or None, got {keep!r}")
        self._control.keep = keep

    def state_dict(self) -> dict:
        return {"seed": self._control.seed, "forward_count": self._control.forward_count, "keep": self._control.keep}

    def load_state_dict(self, state: dict) -> None:
        self._control.seed = int(state["seed"])
        self._control.forward_count = int(state["forward_count"])
        self.set_keep(state.get("keep"))

    def remove(self) -> None:
        remove(self.model)

    def __repr__(self) -> str:
        families = sorted({layer.family for layer in self.layers})
        return (
            f"RandomLTDHandle(stack={self.stack_name!r}, layers={self.drop_layers} of {self.num_layers}, "
            f"family={','.join(families)}, keep={self.keep})"
        )


def apply(
    model: nn.Module,
    layers: LayerSelection = "1:-1",
    *,
    keep: int | None = None,
    seed: int | None = None,
    keep_prefix_tokens: bool = False,
    stack: str | None = None,
) -> RandomLTDHandle:
    """Apply random-LTD to ``model`` in place and return its handle.

    Args:
        layers: which layers of the stack drop tokens: a slice string (``"1:-1"``, the paper's
            default: all but the first and the last), ``"::2"``, or a list of indices.
        keep: initial kept length (``None``: no dropping until ``set_keep``).
        seed: base seed of the index draws; ``None`` draws one from ``torch``'s global RNG, so
            ``torch.manual_seed`` makes runs reproducible. Use a different seed per rank in DDP.
        keep_prefix_tokens: always keep prefix tokens such as a ViT's CLS (the paper does not).
        stack: name of the layer container when the model has several (encoder-decoder).
    """
    if get_handle(model) is not None:
        raise RandomLTDError("random-LTD is already applied to this model; random_ltd.remove(model) first")
    stack_name, members = find_layer_stack(model, stack)
    chosen = parse_layer_selection(layers, len(members))
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    control = DropControl(seed=seed, keep_prefix_tokens=keep_prefix_tokens)
    # MoE models: the router load-balancing loss over the tokens each layer routed (None otherwise).
    selected = {members[index][1]: adapters.adapter_for(type(members[index][1])) for index in chosen}
    router_loss = moe.attach(model, selected, lambda: control.keep is not None)
    wrapped = []
    for index in chosen:
        name, layer = members[index]
        adapter = adapters.adapter_for(type(layer))
        wrap_layer(layer, adapter, index, control)
        wrapped.append(WrappedLayer(index=index, name=name, family=adapter.name))
    handle = RandomLTDHandle(model, stack_name, wrapped, len(members), control)
    handle.set_keep(keep)
    handle.router_loss = router_loss
    model.__dict__[_HANDLE_ATTR] = handle
    if len(wrapped) == len(members) and len(members) > 2:
        warnings.warn("random-LTD drops tokens in every layer; the paper keeps the first and last layers full")
    return handle


def get_handle(model: nn.Module) -> RandomLTDHandle | None:
    """The handle of a model that random-LTD was applied to, else ``None``."""
    return model.__dict__.get(_HANDLE_ATTR)


def remove(model: nn.Module) -> None:
    """Undo ``apply``: original layer classes, no hook, nothing left behind."""
    handle = model.__dict__.get(_HANDLE_ATTR)
    if handle is None:
        raise RandomLTDError("random-LTD is not applied to this model")
    wrapped = [m for m in model.modules() if is_wrapped(m) and layer_state(m).control is handle._control]
    for module in wrapped:
        check_unwrappable(module)  # all or nothing: never leave a half-restored model
    for module in wrapped:
        unwrap_layer(module)
    handle._hook.remove()
    if handle.router_loss is not None:
        handle.router_loss.remove()
    del model.__dict__[_HANDLE_ATTR]
