"""Mixture-of-Depths (Raposo et al. 2024, arXiv 2404.02258) as a selection strategy.

Each routed layer gets a router, a linear map ``d -> 1`` registered on the layer as the submodule
``mod_router`` (state-dict names ``<layer name>.mod_router.weight`` and ``.bias``). In training the
router scores every token, the layer runs on the top ``capacity`` tokens of each sequence
(expert choice; kept positions sorted, gathered with their masks, positions and rotary tables by
the one dropping layer, ``random_ltd.layer``) and a kept token ``x`` leaves as
``x + r * (layer(x) - x)``: the layer's residual branch scaled by the router weight ``r``, which
puts the router on the gradient path. Every other token passes through unchanged.

``r`` is ``sigmoid(logit)`` by default (``weight="sigmoid"``); ``weight="logit"`` multiplies by the
raw score as the paper does.

Top-k over a sequence looks at later tokens, so it cannot route token by token. The paper's
remedy used here: an auxiliary loss, the binary cross-entropy of each router's logits against
its own top-k membership (targets without gradient), teaches the router's sign to predict the
choice. ``aux_loss()`` returns it for the latest training forward (mean over routed layers);
add ``coef * handle.aux_loss()`` to the loss. In evaluation and generation the layers route
causally: a token runs the layer when its router logit is positive, whatever the other tokens,
so a full forward and token-by-token generation with a cache make the same choices.

``remove(model)`` restores the original layer classes, deletes the routers from the layers (the
state dict is the original model's again) and returns them, by layer name, detached.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from random_ltd import api, ops
from random_ltd.accounting import capacity_length, check_capacity
from random_ltd.errors import RandomLTDError
from random_ltd.layer_selection import LayerSelection, parse_layer_selection
from random_ltd.strategies import LayerInfo, Strategy, Weighted

ROUTER_NAME = "mod_router"
WEIGHTS = ("sigmoid", "logit")


def router_weight(logits: torch.Tensor, weight: str) -> torch.Tensor:
    """The factor of a kept token's residual branch: ``sigmoid(logit)`` or the raw logit."""
    return torch.sigmoid(logits) if weight == "sigmoid" else logits


def membership(indices: torch.Tensor, seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, s)``: 1 where a position is among ``indices`` ``(B, k)``, else 0 (the auxiliary loss's targets)."""
    targets = torch.zeros(indices.shape[0], seq_len, dtype=dtype, device=indices.device)
    return targets.scatter(1, indices, 1.0)


def prediction_loss(logits: torch.Tensor, indices: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """The router-prediction loss: mean BCE of ``(B, s)`` logits against top-k membership, over valid tokens."""
    targets = membership(indices, logits.shape[1], torch.float32)
    losses = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    if valid is None:
        return losses.mean()
    return (losses * valid).sum() / valid.sum().clamp_min(1)


class RouterSlot:
    """One routed layer's ``LayerInfo.stream``: its router and the aux loss of its latest training forward.

    Compiled blocks read the router and write the loss through this object, never through the layer's
    position (a Python int guard: every routed block would be its own graph)."""

    def __init__(self, router: nn.Module):
        self.router = router
        self.aux_loss: torch.Tensor | None = None


class MixtureOfDepths(Strategy):
    """Expert-choice top-``capacity`` routing with one router per routed layer (see the module doc)."""

    weighted = True
    keeps_own_length = True  # the capacity: the handle's kept length does not apply

    def __init__(self, routers: dict[int, nn.Module], capacity: float | int, weight: str = "sigmoid",
                 skip_padding: bool = True):
        self.routers = routers
        self.capacity = capacity
        self.weight = weight
        self.needs_context = skip_padding  # the context: the model's (B, s) attention_mask, or None
        self.slots = {position: RouterSlot(router) for position, router in routers.items()}
        self.hooks = None  # AuxLossHooks, installed by apply
        self.removed: dict[str, nn.Module] = {}  # the routers by layer name, once removed from the model

    def check_layers(self, wrapped) -> None:
        """Refuse a handle whose wrapped layers are not the routed ones (``handle.strategy = ...``)."""
        if list(wrapped) != sorted(self.routers):
            raise RandomLTDError(f"this Mixture-of-Depths has routers for layers {sorted(self.routers)}, not the "
                                 f"handle's wrapped layers {list(wrapped)}: mod.apply(model, ...) adds them")

    def stream(self, position: int) -> RouterSlot:
        return self.slots[position]

    @property
    def aux_losses(self) -> dict[int, torch.Tensor]:
        """The latest training forward's loss of each routed layer, by position (a checkpoint replay overwrites
        its own)."""
        return {position: slot.aux_loss for position, slot in self.slots.items() if slot.aux_loss is not None}

    def clear_aux_losses(self) -> None:
        for slot in self.slots.values():
            slot.aux_loss = None

    def _slot(self, layer: LayerInfo) -> RouterSlot:
        return layer.stream if isinstance(layer.stream, RouterSlot) else self.slots[layer.position]

    def logits(self, layer: LayerInfo, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, s)`` router scores of the batch-first ``tokens``."""
        router = self._slot(layer).router
        width = getattr(router, "in_features", tokens.shape[-1])
        if tokens.shape[-1] != width:
            raise RandomLTDError(f"Mixture-of-Depths: the router of layer {layer.position} ({layer.name}) takes "
                                 f"{width} features but the layer receives {tokens.shape[-1]}: pass hidden_size="
                                 f"{tokens.shape[-1]} to mod.apply")
        return router(tokens).squeeze(-1)

    def begin_forward(self, inputs: Mapping[str, object], keep) -> torch.Tensor | None:
        mask = inputs.get("attention_mask")
        return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def select(self, layer: LayerInfo, tokens: torch.Tensor, keep, context: torch.Tensor | None) -> Weighted:
        logits = self.logits(layer, tokens)
        keys = logits.detach()
        valid = None if context is None else _valid(context, tokens.shape[:2], layer)
        if valid is not None:  # padding runs the layer only where a sequence has fewer tokens than the capacity
            keys = keys.masked_fill(~valid, float("-inf"))
        indices = ops.keep_top(keys, capacity_length(self.capacity, tokens.shape[1]))
        self._slot(layer).aux_loss = prediction_loss(logits, indices, valid)
        return Weighted(indices, router_weight(logits, self.weight).gather(1, indices))

    def select_causal(self, layer: LayerInfo, tokens: torch.Tensor) -> Weighted:
        """Each token by itself: it runs the layer when its router logit is positive (evaluation, generation).

        The kept length becomes a shape, so it is read on the host (one sync per layer and call). Sequences
        that choose fewer tokens than the batch's most fill their rows with tokens that are masked as keys
        and leave the layer unchanged (``Weighted.valid``).
        """
        logits = self.logits(layer, tokens)
        chosen = logits > 0
        counts = chosen.sum(dim=1).tolist()
        indices = ops.keep_top(chosen.to(logits.dtype), max(counts))
        weights = router_weight(logits, self.weight).gather(1, indices)
        if len(set(counts)) == 1:
            return Weighted(indices, weights)
        valid = chosen.gather(1, indices)
        return Weighted(indices, weights.masked_fill(~valid, 0.0), valid)

    def aux_loss(self) -> torch.Tensor:
        """Mean over routed layers of the router-prediction BCE of the latest training forward."""
        if not self.aux_losses:
            raise RandomLTDError("no training forward has routed tokens yet: aux_loss() follows one")
        if torch.is_grad_enabled() and any(not loss.requires_grad and self.routers[position].weight.requires_grad
                                           for position, loss in self.aux_losses.items()):
            raise RandomLTDError("the router-prediction loss of this forward has no gradient: reentrant gradient "
                                 "checkpointing runs the forward without autograd; use use_reentrant=False")
        return torch.stack(list(self.aux_losses.values())).mean()

    def on_remove(self, model: nn.Module, layer_names: dict[int, str]) -> None:
        """Called by ``random_ltd.remove``: the routers leave the layers (kept in ``removed``), the hooks go."""
        modules = dict(model.named_modules())
        for position in self.routers:
            delattr(modules[layer_names[position]], ROUTER_NAME)
        self.removed = {layer_names[position]: router for position, router in self.routers.items()}
        if self.hooks is not None:
            self.hooks.remove()

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "weight": self.weight}

    def load_state_dict(self, state: dict) -> None:
        saved = (state.get("capacity", self.capacity), state.get("weight", self.weight))
        if saved != (self.capacity, self.weight):
            raise RandomLTDError(f"the saved Mixture-of-Depths setting (capacity, weight) {saved} differs from this "
                                 f"model's {(self.capacity, self.weight)}: apply the same one")

    def __repr__(self) -> str:
        return f"MixtureOfDepths(capacity={self.capacity}, weight={self.weight!r}, layers={sorted(self.routers)})"


class AuxLossHooks:
    """The model's forward hooks: each forward starts with no recorded loss; with ``coef``, a training forward's
    ``output.loss`` gets ``coef * aux_loss()`` added and ``output.mod_aux_loss`` holds it, as MoE models add their
    load-balancing loss."""

    def __init__(self, model: nn.Module, strategy: MixtureOfDepths, coef: float | None):
        self.strategy, self.coef = strategy, coef
        self.handles = [model.register_forward_pre_hook(self.before)]
        if coef is not None:
            self.handles.append(model.register_forward_hook(self.after))

    def before(self, model, args) -> None:
        self.strategy.clear_aux_losses()

    def after(self, model, args, output):
        if not (model.training and self.strategy.aux_losses):
            return None
        aux = self.strategy.aux_loss()
        output.mod_aux_loss = aux
        if getattr(output, "loss", None) is not None:
            output.loss = output.loss + self.coef * aux.to(output.loss.dtype)
        return output

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _valid(mask: torch.Tensor, shape: torch.Size, layer: LayerInfo) -> torch.Tensor:
    if tuple(mask.shape) != tuple(shape):
        raise RandomLTDError(f"layer {layer.position} ({layer.name}) routes {tuple(shape)} tokens but the model's "
                             f"attention_mask is {tuple(mask.shape)}: apply with skip_padding=False")
    return mask.bool()


def _check_layers(layers: LayerSelection, num_layers: int) -> list[int]:
    if not isinstance(layers, str):
        values = list(layers)
        if len(values) != len({index % num_layers if isinstance(index, int) else index for index in values}):
            raise RandomLTDError(f"layers={layers!r} routes a layer twice: each routed layer has one router")
    return parse_layer_selection(layers, num_layers)


def _hidden_size(model: nn.Module, hidden_size: int | None, layers: list[nn.Module]) -> int:
    if hidden_size is not None:
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size <= 0:
            raise RandomLTDError(f"hidden_size must be a positive integer, got {hidden_size!r}")
        return hidden_size
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    widths = sorted({width for layer in layers for width in _layer_widths(layer)})
    if len(widths) == 1:
        return widths[0]
    found = f"its norms and attention read widths {widths}" if widths else "it has no norm or attention to read"
    raise RandomLTDError(f"cannot tell the hidden size of this model's layers ({found}): pass hidden_size=")


def _layer_widths(layer: nn.Module) -> set[int]:
    """The token widths a block's own modules declare: a norm's last normalised dimension, an
    ``nn.MultiheadAttention``'s ``embed_dim`` (a model without a config; one width is the hidden size)."""
    widths = set()
    for module in layer.modules():
        shape = getattr(module, "normalized_shape", None)
        if isinstance(shape, (tuple, list)) and shape and isinstance(shape[-1], int):
            widths.add(shape[-1])
        if isinstance(module, nn.MultiheadAttention):
            widths.add(module.embed_dim)
    return widths


def _new_router(layer: nn.Module, hidden_size: int) -> nn.Linear:
    reference = next(layer.parameters(), None)
    router = nn.Linear(hidden_size, 1)
    if reference is not None:
        router = router.to(device=reference.device, dtype=reference.dtype)
    return router


def apply(
    model: nn.Module,
    layers: LayerSelection = "1::2",
    *,
    capacity: float | int = 0.125,
    weight: str = "sigmoid",
    hidden_size: int | None = None,
    skip_padding: bool = True,
    aux_loss_coef: float | None = None,
    stack: str | None = None,
) -> api.RandomLTDHandle:
    """Route ``layers`` of ``model`` with Mixture-of-Depths, in place; returns ``random_ltd.apply``'s handle.

    ``layers``: as ``random_ltd.apply`` (default every other layer from the second, the paper's
    best setting, never the first, whose cache length positions the generated tokens);
    ``capacity``: a fraction in (0, 1] of each sequence or an int count >= 2 (default 12.5%);
    ``weight``: ``"sigmoid"`` or ``"logit"`` (the router weight ``r``); ``hidden_size``: the
    routers' input size (default the model config's, else the one width the routed
    layers' norms and attention modules declare); ``skip_padding``: read the model's 2-D
    ``attention_mask`` (a forward hook, ``random_ltd.contexts``) so that padding is chosen last and
    left out of the auxiliary loss; ``False`` for inputs without padding when each routed block is
    compiled with ``fullgraph=True`` (the context lookup does not trace); ``aux_loss_coef``: add
    ``aux_loss_coef * aux_loss()`` to a training forward's ``output.loss`` (and set
    ``output.mod_aux_loss``), as MoE models add theirs. Everything is checked before the model is
    touched. ``handle.aux_loss()`` is the router-prediction loss of the latest training forward.
    """
    if not isinstance(model, nn.Module):
        raise RandomLTDError(f"apply() needs a torch.nn.Module, got {type(model).__name__}")
    api.check_unapplied(model)
    capacity = check_capacity(capacity, field="capacity")
    if not isinstance(skip_padding, bool):
        raise RandomLTDError(f"skip_padding must be True or False, got {skip_padding!r}")
    if aux_loss_coef is not None and (isinstance(aux_loss_coef, bool) or not isinstance(aux_loss_coef, (int, float))
                                      or not aux_loss_coef >= 0):
        raise RandomLTDError(f"aux_loss_coef must be a number >= 0 or None, got {aux_loss_coef!r}")
    if weight not in WEIGHTS:
        raise RandomLTDError(f"weight={weight!r}: the router weight is one of {WEIGHTS}")
    _, members = api.find_layer_stack(model, stack)
    chosen = _check_layers(layers, len(members))
    size = _hidden_size(model, hidden_size, [members[index][1] for index in chosen])
    for index in chosen:
        name, layer = members[index]
        if hasattr(layer, ROUTER_NAME):
            raise RandomLTDError(f"layer {name} already has a {ROUTER_NAME!r} attribute: it cannot take a router")
    routers = {index: _new_router(members[index][1], size) for index in chosen}
    strategy = MixtureOfDepths(routers, capacity, weight, skip_padding)
    handle = api.apply(model, chosen, strategy=strategy, stack=stack)
    for index, router in routers.items():
        members[index][1].add_module(ROUTER_NAME, router)
    strategy.hooks = AuxLossHooks(model, strategy, aux_loss_coef)
    return handle


def remove(model: nn.Module) -> dict[str, nn.Module]:
    """Undo ``apply`` (as ``random_ltd.remove`` does); returns the trained routers by layer name, no longer
    part of the model."""
    handle = api.get_handle(model)
    if handle is None or not isinstance(handle.strategy, MixtureOfDepths):
        raise RandomLTDError("Mixture-of-Depths is not applied to this model")
    api.remove(model)
    return handle.strategy.removed
