"""Mixture-of-experts decoders: the router load-balancing loss over the tokens each layer routed.

transformers' ``load_balancing_loss_func`` weighs every layer's router rows by the one
``attention_mask`` of the batch, so it assumes ``B*s`` rows per layer; a dropping layer's router
sees ``B*k``. When a training forward with an attention mask asks for router logits, the loss
is computed here instead, with each layer's rows weighted by the padding mask at the tokens it
actually routed: the pooled Switch-Transformer formula

    aux = E * sum_e (T_e / N) * (P_e / N),

``T_e`` the number of valid (layer, token) rows that chose expert ``e`` among their top ``k``,
``P_e`` the sum of their router probabilities for ``e``, ``N`` the number of valid rows. The model
is called with ``output_router_logits=False`` (so it neither crashes nor adds its own loss), and
``aux_loss``, ``router_logits`` (each layer's rows, short for dropping layers) and
``loss += router_aux_loss_coef * aux_loss`` are filled in afterwards, as the model would.
Without an attention mask transformers' own loss already pools the rows each layer routed.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch
import torch.nn as nn

from random_ltd.errors import RandomLTDError
from random_ltd.strategies import RAN_ATTR

_KEPT_ATTR = "_random_ltd_kept_indices"


def remember_kept(layer: nn.Module, call, indices: torch.Tensor) -> None:
    """``LayerAdapter.prepare`` of MoE decoder layers: the router hook reads the kept indices."""
    layer.__dict__[_KEPT_ATTR] = indices


def load_balancing_loss(router_logits: list[torch.Tensor], valid: list[torch.Tensor], num_experts: int,
                        top_k: int) -> torch.Tensor:
    """The pooled load-balancing loss; ``router_logits[l]`` is ``(n_l, E)``, ``valid[l]`` its ``(n_l,)`` 0/1 weights."""
    device = router_logits[0].device
    tokens_per_expert = torch.zeros(num_experts, dtype=torch.float32, device=device)
    probability_per_expert = torch.zeros(num_experts, dtype=torch.float32, device=device)
    rows = torch.zeros((), dtype=torch.float32, device=device)
    for logits, weights in zip(router_logits, valid, strict=True):
        weights = weights.to(device=device, dtype=torch.float32)
        probabilities = torch.softmax(logits.to(device), dim=-1)
        _, chosen = torch.topk(probabilities, top_k, dim=-1)
        counts = torch.zeros(num_experts, dtype=torch.float32, device=device)
        counts = counts.scatter_add_(0, chosen.reshape(-1), weights.repeat_interleave(top_k))
        tokens_per_expert = tokens_per_expert + counts
        probability_per_expert = probability_per_expert + (probabilities.float() * weights.unsqueeze(-1)).sum(dim=0)
        rows = rows + weights.sum()
    return torch.sum((tokens_per_expert / rows) * (probability_per_expert / rows).unsqueeze(0)) * num_experts


def router_class(model: nn.Module) -> type | None:
    """The router module class whose outputs transformers records as ``router_logits``, if any."""
    for module in model.modules():
        recorder = (getattr(type(module), "_can_record_outputs", None) or {}).get("router_logits")
        target = getattr(recorder, "target_class", None)
        if isinstance(target, type):
            return target
    return None


class RouterLoss:
    """Hooks on a MoE model (installed by ``apply``) that make its load-balancing loss exact.

    ``routed_tokens`` holds, after each training forward, the number of token rows each router
    routed (``B*k`` in a dropping layer, ``B*s`` elsewhere), in layer order.
    """

    def __init__(self, model: nn.Module, routers: dict[nn.Module, nn.Module | None], control):
        self.model, self.routers, self.control = model, routers, control
        self.routed_tokens: list[int] = []
        self._recording: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._mask: torch.Tensor | None = None
        self._in_forward = False
        self._signature = inspect.signature(type(model).forward)
        self._hooks = [model.register_forward_pre_hook(self._before, with_kwargs=True),
                       model.register_forward_hook(self._after, with_kwargs=True)]
        self._hooks += [router.register_forward_hook(self._routed) for router in routers]

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def _before(self, model, args, kwargs):
        self.routed_tokens, self._recording, self._in_forward = [], None, True
        # evaluation routes too under a weighted strategy (Mixture-of-Depths' causal routing)
        if not (model.training or self.control.strategy.weighted):
            return None
        bound = self._signature.bind(model, *args, **kwargs)
        wanted = bound.arguments.get("output_router_logits")
        wanted = model.config.output_router_logits if wanted is None else wanted
        mask = bound.arguments.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        if not (wanted and self.control.dropping and (mask is not None or not model.training)):
            return None
        tokens = next(bound.arguments[name] for name in ("input_ids", "inputs_embeds")
                      if bound.arguments.get(name) is not None)
        self._recording = []
        self._mask = mask if mask is not None else torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        bound.arguments["output_router_logits"] = False
        return bound.args[1:], bound.kwargs

    def _routed(self, router, args, output):
        if not self._in_forward:  # not when checkpointing recomputes
            return
        logits = output[0] if isinstance(output, tuple) else output
        if router.training:
            self.routed_tokens.append(logits.shape[0])
        if self._recording is None:
            return
        valid = self._mask
        layer = self.routers[router]
        kept = None if layer is None else layer.__dict__.get(_KEPT_ATTR)
        if logits.shape[0] != valid.numel():
            if kept is None or kept.numel() != logits.shape[0]:
                raise RandomLTDError(f"a router saw {logits.shape[0]} tokens, neither the batch nor its kept tokens")
            valid = valid.gather(1, kept.to(valid.device))
        ran = None if layer is None else layer.__dict__.get(RAN_ATTR)
        if ran is not None:  # fillers of an unevenly routed batch, or a layer no token ran
            valid = valid * ran.to(valid.device, valid.dtype)
        self._recording.append((logits, valid.reshape(-1)))

    def _after(self, model, args, kwargs, output):
        for layer in set(self.routers.values()) - {None}:
            layer.__dict__.pop(_KEPT_ATTR, None)
        recording, self._recording, self._mask, self._in_forward = self._recording, None, None, False
        if recording is None:
            return None
        logits = [rows for rows, _ in recording]
        aux_loss = load_balancing_loss(logits, [valid for _, valid in recording], model.num_experts,
                                       model.num_experts_per_tok)
        values = {field.name: getattr(output, field.name) for field in dataclasses.fields(output)}
        values.update(aux_loss=aux_loss, router_logits=tuple(logits))
        if values.get("loss") is not None:
            values["loss"] = values["loss"] + model.router_aux_loss_coef * aux_loss.to(values["loss"].device)
        return type(output)(**values)


def attach(model: nn.Module, layers: dict[nn.Module, object], control) -> RouterLoss | None:
    """Install ``RouterLoss`` on a transformers MoE causal LM; ``None`` for any other model.

    ``layers`` maps the layers that will drop to their adapters; they may drop while
    ``control.dropping`` (the handle's ``DropControl``: a kept length is set, or span routing).
    Refuses a MoE model whose dropping layers' adapter does not remember their kept tokens
    (``remember_kept``): its router loss would be wrong.
    """
    routing = router_class(model)
    if routing is None or not all(hasattr(model, name) for name in ("router_aux_loss_coef", "num_experts",
                                                                    "num_experts_per_tok")):
        return None
    enclosing = {id(module): layer for layer in layers for module in layer.modules()}
    routers = {module: enclosing.get(id(module)) for module in model.modules() if isinstance(module, routing)}
    for layer in set(routers.values()) - {None}:
        if layers[layer].prepare is not remember_kept:
            raise RandomLTDError(
                f"{type(layer).__name__} routes tokens to experts, but its adapter does not remember the kept tokens, "
                "so the router load-balancing loss would be wrong; register it with random_ltd.adapters.hf.MOE"
            )
    return RouterLoss(model, routers, control)
