"""``apply`` / ``remove``: find a model's stack of transformer layers by class and wrap a selection."""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn

from random_ltd import adapters
from random_ltd.adapters import moe
from random_ltd.errors import RandomLTDError
from random_ltd.layer import DropControl, check_unwrappable, is_wrapped, layer_state, unwrap_layer, wrap_layer
from random_ltd.layer_selection import LayerSelection, parse_layer_selection
from random_ltd.selection import UniformSelection
from random_ltd.swap import original_class

_HANDLE_ATTR = "_random_ltd_handle"


@dataclasses.dataclass(frozen=True)
class WrappedLayer:
    index: int
    name: str
    family: str


def find_layer_stack(model: nn.Module, stack: str | Sequence[str] | None = None):
    """The model's transformer layers, found by registered class and grouped by parent container.

    Returns ``(stack_name, [(name, layer), ...])`` in execution order. With several stacks
    (encoder-decoder models) ``stack`` names the one to use, or a sequence of stacks that run one
    after the other as one (Flux: ``("transformer.transformer_blocks",
    "transformer.single_transformer_blocks")``), given in execution order.
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
        names = (stack,) if isinstance(stack, str) else tuple(stack)
        missing = [name for name in names if name not in groups]
        if missing or not names or len(set(names)) < len(names):
            raise RandomLTDError(f"stack={stack!r}: not one stack or distinct stacks of this model: "
                                 f"{sorted(groups)}")
        return stack, [member for name in names for member in groups[name]]
    if len(groups) > 1:
        raise RandomLTDError(f"this model has several layer stacks {sorted(groups)}: choose one with stack=..., "
                             "or several that run one after the other with stack=(first, second, ...)")
    return next(iter(groups.items()))


def _inside_registered(name: str, groups: dict[str, list]) -> bool:
    return any(name.startswith(layer_name + ".") for members in groups.values() for layer_name, _ in members)


class RandomLTDHandle:
    """What ``apply`` returns: sets the kept length and reports what was wrapped.

    ``set_keep(k)`` applies to every wrapped layer; ``None`` or ``k >= s`` disables dropping.
    A layer's kept tokens are a hash of ``seed``, the layer's position and values drawn from
    torch's default generator (``random_ltd.rng``): gradient checkpointing replays them exactly,
    and a resumed run draws the same tokens once torch's RNG state is restored with the model.
    """

    def __init__(self, model: nn.Module, stack_name: str, layers: list[WrappedLayer], num_layers: int,
                 control: DropControl, selection: UniformSelection):
        self.model = model
        self.stack_name = stack_name
        self.layers = layers
        self.num_layers = num_layers
        self._control = control
        self._selection = selection
        self._hook = model.register_forward_pre_hook(_IdsContext(control), with_kwargs=True) \
            if selection.needs_context else None
        self.router_loss: moe.RouterLoss | None = None  # MoE models: see random_ltd.adapters.moe

    @property
    def keep(self) -> int | None:
        return self._control.keep

    @property
    def seed(self) -> int:
        return self._selection.seed

    @property
    def drop_layers(self) -> list[int]:
        return [layer.index for layer in self.layers]

    @property
    def selection(self):
        """The strategy choosing each dropping layer's kept tokens (``random_ltd.selection``).

        Assign another callable ``(position, tokens, keep, context) -> (B, keep) indices`` with a
        ``needs_context`` attribute to change how tokens are chosen (e.g. in an experiment).
        """
        return self._control.selection

    @selection.setter
    def selection(self, strategy) -> None:
        if not callable(strategy) or not hasattr(strategy, "needs_context"):
            raise RandomLTDError("a selection strategy is a callable with a needs_context attribute")
        if strategy.needs_context and not self._selection.needs_context:
            raise RandomLTDError("this handle feeds no per-forward context; apply() with protect_ids for one")
        self._control.selection = strategy

    def set_keep(self, keep: int | None) -> None:
        self._control.keep = check_keep(keep)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "keep": self.keep}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` (a ``forward_count`` saved by version 0.1 is ignored)."""
        self._selection.seed = check_seed(state["seed"])
        self.set_keep(state.get("keep"))

    def remove(self) -> None:
        remove(self.model)

    def __repr__(self) -> str:
        families = sorted({layer.family for layer in self.layers})
        return (
            f"RandomLTDHandle(stack={self.stack_name!r}, layers={self.drop_layers} of {self.num_layers}, "
            f"family={','.join(families)}, keep={self.keep})"
        )


class _IdsContext:
    """Forward pre-hook: where the model's ``input_ids`` hold a protected id, for this forward."""

    def __init__(self, control: DropControl):
        self.control = control

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training or self.control.keep is None:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(input_ids, torch.Tensor):
            raise RandomLTDError("protect_ids finds protected tokens by id: call the model with input_ids")
        self.control.context.set(self.control.selection.ids_mask(input_ids))


def check_keep(keep) -> int | None:
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep <= 0):
        raise RandomLTDError(f"kept length must be a positive integer or None, got {keep!r}")
    return keep


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RandomLTDError(f"seed must be an integer, got {seed!r}")
    return seed


def _check_ints(name: str, values) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise RandomLTDError(f"{name} must be a sequence of integers, got {values!r}")
    values = tuple(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise RandomLTDError(f"{name} must hold integers only, got {values!r}")
    return values


def apply(
    model: nn.Module,
    layers: LayerSelection = "1:-1",
    *,
    keep: int | None = None,
    seed: int | None = None,
    keep_prefix_tokens: bool = False,
    protect_positions: Sequence[int] = (),
    protect_ids: Sequence[int] = (),
    stack: str | Sequence[str] | None = None,
) -> RandomLTDHandle:
    """Apply random-LTD to ``model`` in place and return its handle.

    Every argument is checked before the model is touched: on any error the model is left
    exactly as it was.

    Args:
        layers: which layers of the stack drop tokens: a slice string (``"1:-1"``, the paper's
            default: all but the first and the last), ``"::2"``, or a list of indices.
        keep: initial kept length (``None``: no dropping until ``set_keep``).
        seed: seed of the index draws, hashed with torch's default random stream (so
            ``torch.manual_seed`` makes runs reproducible); ``None`` draws one from that stream.
            Under data parallelism give each rank its own
            (``random_ltd.integrations.distributed.rank_seed``).
        keep_prefix_tokens: always keep prefix tokens such as a ViT's CLS (the paper does not).
        protect_positions: positions always kept (negative: from the end), e.g. ``(0,)``.
        protect_ids: token ids always kept, found in the model's ``input_ids`` at each forward
            (the special-tokens variant the paper tests and rejects, Section 5.2).
        stack: name of the layer container when the model has several (encoder-decoder), or
            names of containers that run one after the other, in that order (Flux's two block kinds).
    """
    if not isinstance(model, nn.Module):
        raise RandomLTDError(f"apply() needs a torch.nn.Module, got {type(model).__name__}")
    if get_handle(model) is not None:
        raise RandomLTDError("random-LTD is already applied to this model; random_ltd.remove(model) first")
    keep = check_keep(keep)
    if not isinstance(keep_prefix_tokens, bool):
        raise RandomLTDError(f"keep_prefix_tokens must be True or False, got {keep_prefix_tokens!r}")
    positions, ids = _check_ints("protect_positions", protect_positions), _check_ints("protect_ids", protect_ids)
    seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else check_seed(seed)
    stack_name, members = find_layer_stack(model, stack)
    chosen = [(index, *members[index]) for index in parse_layer_selection(layers, len(members))]
    _check_free(chosen)
    _check_supported(chosen)
    if keep_prefix_tokens:
        prefix = max(adapters.adapter_for(type(layer)).num_prefix_tokens for _, _, layer in chosen)
        positions = tuple(range(prefix)) + positions
    selection = UniformSelection(seed, positions, ids)
    control = DropControl(selection=selection, keep=keep)
    selected = {layer: adapters.adapter_for(type(layer)) for _, _, layer in chosen}
    router_loss = moe.attach(model, selected, control)
    wrapped = [_wrap(index, name, layer, control) for index, name, layer in chosen]
    handle = RandomLTDHandle(model, stack_name, wrapped, len(members), control, selection)
    handle.router_loss = router_loss
    model.__dict__[_HANDLE_ATTR] = handle
    if len(wrapped) == len(members) and len(members) > 2:
        warnings.warn("random-LTD drops tokens in every layer; the paper keeps the first and last layers full",
                      stacklevel=2)
    return handle


def _check_free(chosen: list[tuple[int, str, nn.Module]]) -> None:
    for _, name, layer in chosen:
        if original_class(layer) is not type(layer):
            raise RandomLTDError(f"layer {name} ({type(layer).__qualname__}) is already wrapped "
                                 "(by random-LTD or TokenBypass): remove that first")


def _check_supported(chosen: list[tuple[int, str, nn.Module]]) -> None:
    """Each family's own refusal (``LayerAdapter.check``), before any layer is wrapped."""
    for _, _, layer in chosen:
        check = adapters.adapter_for(type(layer)).check
        if check is not None:
            check(layer)


def _wrap(index: int, name: str, layer: nn.Module, control: DropControl) -> WrappedLayer:
    adapter = adapters.adapter_for(type(layer))
    wrap_layer(layer, adapter, index, control)
    return WrappedLayer(index=index, name=name, family=adapter.name)


def get_handle(model: nn.Module) -> RandomLTDHandle | None:
    """The handle of a model that random-LTD was applied to, else ``None``."""
    return model.__dict__.get(_HANDLE_ATTR) if isinstance(model, nn.Module) else None


def remove(model: nn.Module) -> None:
    """Undo ``apply``: original layer classes, no hook, nothing left behind."""
    handle = get_handle(model)
    if handle is None:
        raise RandomLTDError("random-LTD is not applied to this model")
    wrapped = [m for m in model.modules() if is_wrapped(m) and layer_state(m).control is handle._control]
    for module in wrapped:
        check_unwrappable(module)  # all or nothing: never leave a half-restored model
    for module in wrapped:
        unwrap_layer(module)
    if handle._hook is not None:
        handle._hook.remove()
    if handle.router_loss is not None:
        handle.router_loss.remove()
    del model.__dict__[_HANDLE_ATTR]
