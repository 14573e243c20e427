"""``apply`` / ``remove``: find a model's stack of transformer layers by class and wrap them with a
selection strategy (random-LTD's uniform draws, protected tokens, TokenBypass, or your own)."""
from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn

from random_ltd import adapters, span
from random_ltd.adapters import moe
from random_ltd.errors import RandomLTDError
from random_ltd.layer import (
    DropControl,
    check_unwrappable,
    is_wrapped,
    layer_state,
    set_position,
    unwrap_layer,
    wrap_layer,
)
from random_ltd.layer_selection import LayerSelection, parse_layer_selection
from random_ltd.strategies import Strategy, UniformSelection, as_strategy
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
    """What ``apply`` returns: sets the kept length, holds the strategy, reports what was wrapped.

    ``set_keep(k)`` applies to every wrapped layer; ``None`` or ``k >= s`` disables dropping.
    With the default strategy a layer's kept tokens are a hash of ``seed``, the layer's position
    and values drawn from torch's default generator (``random_ltd.rng``): gradient checkpointing
    replays them exactly, and a resumed run draws the same tokens once torch's RNG state is
    restored with the model. Attributes the handle lacks are read from its strategy (TokenBypass:
    ``handle.importance``, ``handle.indices``, ``handle.update(...)``).
    """

    def __init__(self, model: nn.Module, stack_name: str, layers: list[WrappedLayer], num_layers: int,
                 control: DropControl):
        self.model = model
        self.stack_name = stack_name
        self.layers = layers
        self.num_layers = num_layers
        self._control = control
        self._hooks: tuple = ()
        self.router_loss: moe.RouterLoss | None = None  # MoE models: see random_ltd.adapters.moe
        self._hook_for(control.strategy)

    @property
    def keep(self) -> int | None:
        return self._control.keep

    @property
    def seed(self) -> int | None:
        """The strategy's seed (random-LTD's draws), ``None`` for a strategy without one."""
        return getattr(self._control.strategy, "seed", None)

    @property
    def drop_layers(self) -> list[int]:
        return [layer.index for layer in self.layers]

    @property
    def strategy(self) -> Strategy:
        """The strategy choosing each dropping layer's kept tokens (``random_ltd.strategies``).

        Assign another (a ``Strategy``, or a plain context-free function ``(position, tokens,
        keep, context) -> (B, keep) indices``) to change how tokens are chosen; a strategy that
        reads the model's inputs gets them from the next forward on.
        """
        return self._control.strategy

    @strategy.setter
    def strategy(self, strategy) -> None:
        strategy = as_strategy(strategy)
        if callable(getattr(strategy, "check_layers", None)):  # span routing: its routes need these layers
            strategy.check_layers(self.drop_layers)
        self._hook_for(strategy)
        self._control.strategy = strategy
        modules = dict(self.model.named_modules())
        for layer in self.layers:  # each layer names itself by the new strategy's stream
            module = modules[layer.name]
            set_position(module, layer_state(module).info.position)  # (a pipeline stage's may differ from its index)

    selection = strategy  # the name of version 0.1

    def _hook_for(self, strategy: Strategy) -> None:
        """Model forward hooks while the strategy reads the model's inputs, none otherwise: one before
        the forward (the context) and one after it, also on an error (later layer calls are replays)."""
        if strategy.needs_context and not self._hooks:
            self._hooks = (self.model.register_forward_pre_hook(BeginForward(self._control), with_kwargs=True),
                           self.model.register_forward_hook(EndForward(self._control), always_call=True))
        elif not strategy.needs_context:
            self.remove_hooks()

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = ()

    @property
    def dynamic_keep(self) -> bool:
        """Whether compiled layers see the kept length as a dynamic size (``apply(dynamic_keep=...)``)."""
        return self._control.dynamic_keep

    @dynamic_keep.setter
    def dynamic_keep(self, dynamic: bool) -> None:
        self._control.dynamic_keep = _check_bool("dynamic_keep", dynamic)

    def set_keep(self, keep: int | None) -> None:
        if keep is not None and getattr(self._control.strategy, "keeps_own_length", False):
            raise RandomLTDError(f"set_keep({keep!r}): {type(self._control.strategy).__name__} keeps its own fraction "
                                 "per route; apply other routes to change them")
        self._control.keep = check_keep(keep)

    def state_dict(self) -> dict:
        return {**self.strategy.state_dict(), "keep": self.keep}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` (a ``forward_count`` saved by version 0.1 is ignored)."""
        self.strategy.load_state_dict(state)
        self.set_keep(state.get("keep"))

    def remove(self) -> None:
        remove(self.model)

    def __getattr__(self, name: str):
        if name.startswith("_") or "_control" not in self.__dict__:  # copying and unpickling find no strategy
            raise AttributeError(name)
        try:
            return getattr(self._control.strategy, name)
        except AttributeError:
            raise AttributeError(f"neither the handle nor its {type(self._control.strategy).__name__} strategy "
                                 f"has {name!r}") from None

    def __repr__(self) -> str:
        families = sorted({layer.family for layer in self.layers})
        return (
            f"RandomLTDHandle(stack={self.stack_name!r}, layers={self.drop_layers} of {self.num_layers}, "
            f"family={','.join(families)}, strategy={type(self.strategy).__name__}, keep={self.keep})"
        )


class BeginForward:
    """The model's forward pre-hook: the strategy's context for this forward, from the model's arguments.

    The arguments are bound by name with the signature of the model's ``forward``, read once.
    No context (nothing drops) in evaluation, without a kept length, or while generating with a
    cache that already holds tokens.
    """

    def __init__(self, control: DropControl):
        self.control = control
        self.signature: inspect.Signature | None = None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        keep = self.control.keep
        if not module.training or not self.control.dropping:
            self.control.contexts.begin(None)
            return
        inputs = self.bind(module, args, kwargs)
        context = None if _cache_holds_tokens(inputs) else self.control.strategy.begin_forward(inputs, keep)
        self.control.contexts.begin(context)

    def __getstate__(self) -> dict:
        return {"control": self.control, "signature": None}

    def bind(self, module: nn.Module, args: tuple, kwargs: dict) -> dict:
        if self.signature is None:
            self.signature = inspect.signature(module.forward)
        bound = self.signature.bind_partial(*args, **kwargs).arguments
        for parameter in self.signature.parameters.values():
            if parameter.kind is parameter.VAR_KEYWORD and parameter.name in bound:
                bound.update(bound.pop(parameter.name))
        return bound


class EndForward:
    """The model's forward hook: the forward returned, so later layer calls are checkpoint replays."""

    def __init__(self, control: DropControl):
        self.control = control

    def __call__(self, module: nn.Module, args: tuple, output) -> None:
        self.control.contexts.end()


def _cache_holds_tokens(inputs: dict) -> bool:
    for name in ("past_key_values", "cache"):
        cache = inputs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
            return True
    return False


def check_keep(keep) -> int | None:
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep <= 0):
        raise RandomLTDError(f"kept length must be a positive integer or None, got {keep!r}")
    return keep


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RandomLTDError(f"seed must be an integer, got {seed!r}")
    return seed


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise RandomLTDError(f"{name} must be True or False, got {value!r}")
    return value


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
    strategy: Strategy | None = None,
    keep_prefix_tokens: bool = False,
    protect_positions: Sequence[int] = (),
    protect_ids: Sequence[int] = (),
    stack: str | Sequence[str] | None = None,
    routes: Sequence[tuple[float | int, int, int]] | None = None,
    dynamic_keep: bool = False,
) -> RandomLTDHandle:
    """Apply token dropping to ``model`` in place and return its handle.

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
        strategy: how the kept tokens are chosen (``random_ltd.strategies.Strategy``); default
            random-LTD's ``UniformSelection`` built from ``seed`` and the protections below,
            which configure only that default.
        keep_prefix_tokens: always keep prefix tokens such as a ViT's CLS (the paper does not).
        protect_positions: positions always kept (negative: from the end), e.g. ``(0,)``.
        protect_ids: token ids always kept, found in the model's ``input_ids`` at each forward
            (the special-tokens variant the paper tests and rejects, Section 5.2).
        stack: name of the layer container when the model has several (encoder-decoder), or
            names of containers that run one after the other, in that order (Flux's two block kinds).
        routes: span routing (TREAD) instead of random-LTD: ``[(keep, first_layer, last_layer), ...]``,
            each route keeping a uniform fraction ``keep`` in (0, 1] of the tokens (or an int count)
            through layers ``first..last`` (inclusive, non-overlapping); only ``seed`` and ``stack``
            combine with it (``random_ltd.span``, docs/routing.md).
        dynamic_keep: under ``torch.compile``, trace the kept length as a dynamic size: one graph
            per compiled block for every kept length of an MSLG run, instead of one per length
            (``docs/scale.md``). Eager runs are unaffected.
    """
    if not isinstance(model, nn.Module):
        raise RandomLTDError(f"apply() needs a torch.nn.Module, got {type(model).__name__}")
    check_unapplied(model)
    keep = check_keep(keep)
    _check_bool("keep_prefix_tokens", keep_prefix_tokens)
    _check_bool("dynamic_keep", dynamic_keep)
    positions, ids = _check_ints("protect_positions", protect_positions), _check_protect_ids(model, protect_ids)
    if routes is not None:
        span.check_route_options(layers, keep, strategy, positions, ids, keep_prefix_tokens)
    if strategy is not None:
        if seed is not None or positions or ids or keep_prefix_tokens:
            raise RandomLTDError("seed, protect_positions, protect_ids and keep_prefix_tokens configure the default "
                                 "strategy: pass them to your strategy instead")
        strategy = as_strategy(strategy)
    elif seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    else:
        seed = check_seed(seed)
    stack_name, members = find_layer_stack(model, stack)
    if routes is not None:
        spans = span.check_routes(routes, len(members))
        strategy, layers = span.SpanRouting(spans, seed), span.route_layers(spans)
    chosen = [(index, *members[index]) for index in parse_layer_selection(layers, len(members))]
    _check_free(chosen)
    _check_supported(chosen)
    if routes is not None:
        _check_routable(chosen)
    if keep_prefix_tokens:
        prefix = max(adapters.adapter_for(type(layer)).num_prefix_tokens for _, _, layer in chosen)
        positions = tuple(range(prefix)) + positions
    control = DropControl(strategy or UniformSelection(seed, positions, ids), keep=keep, dynamic_keep=dynamic_keep)
    selected = {layer: adapters.adapter_for(type(layer)) for _, _, layer in chosen}
    router_loss = moe.attach(model, selected, control)
    wrapped = [_wrap(index, name, layer, control) for index, name, layer in chosen]
    handle = RandomLTDHandle(model, stack_name, wrapped, len(members), control)
    handle.router_loss = router_loss
    model.__dict__[_HANDLE_ATTR] = handle
    if len(wrapped) == len(members) and len(members) > 2 and routes is None:
        warnings.warn("random-LTD drops tokens in every layer; the paper keeps the first and last layers full",
                      stacklevel=2)
    return handle


def check_unapplied(model: nn.Module) -> None:
    handle = get_handle(model)
    if handle is not None:
        raise RandomLTDError(f"random-LTD ({type(handle.strategy).__name__}) is already applied to this model, its "
                             "layers are already wrapped: random_ltd.remove(model) first")


def _check_protect_ids(model: nn.Module, protect_ids) -> tuple[int, ...]:
    """Integers, none negative, all inside the vocabulary where the model's config tells its size."""
    ids = _check_ints("protect_ids", protect_ids)
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    for token_id in ids:
        if token_id < 0:
            raise RandomLTDError(f"protect_ids={ids}: {token_id} is negative, and token ids are not")
        if isinstance(vocab_size, int) and token_id >= vocab_size:
            raise RandomLTDError(f"protect_ids={ids}: {token_id} is outside the model's vocabulary of {vocab_size} ids")
    return ids


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


def _check_routable(chosen: list[tuple[int, str, nn.Module]]) -> None:
    """Routes draw a subset per sequence; a family that needs one subset per batch cannot be routed yet."""
    for _, name, layer in chosen:
        if adapters.adapter_for(type(layer)).one_draw_per_batch:
            raise RandomLTDError(f"routes: layer {name} ({type(layer).__name__}) keeps one subset per batch (its "
                                 "rotary table is shared by the batch); span routing draws one per sequence and "
                                 "cannot route it yet: use random-LTD (keep=...) on these blocks")


def _wrap(index: int, name: str, layer: nn.Module, control: DropControl) -> WrappedLayer:
    adapter = adapters.adapter_for(type(layer))
    wrap_layer(layer, adapter, index, control, name)
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
    handle.remove_hooks()
    if handle.router_loss is not None:
        handle.router_loss.remove()
    if callable(getattr(handle.strategy, "on_remove", None)):  # what the strategy added (Mixture-of-Depths' routers)
        handle.strategy.on_remove(model, {layer.index: layer.name for layer in handle.layers})
    del model.__dict__[_HANDLE_ATTR]
