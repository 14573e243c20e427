"""One call of a layer's ``forward``: its arguments by name, editable, and the call itself.

Layers are called with positional or keyword arguments alike (transformers 5.x passes the mask
positionally to some layers), so arguments are found by parameter name. The signature is read
once per layer class (``CallPlan.of``); a call only does list and dict look-ups, which
``torch.compile`` traces without a graph break (``inspect.Signature.bind`` would break it).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect


@dataclasses.dataclass(frozen=True)
class CallPlan:
    """The parameters of a ``forward`` (without ``self``): which ones may come by position."""

    positional: tuple[str, ...]
    names: frozenset[str]
    var_keyword: bool

    @staticmethod
    @functools.cache
    def of(layer_class: type) -> CallPlan:
        parameters = list(inspect.signature(layer_class.forward).parameters.values())[1:]
        positional = tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        return CallPlan(
            positional=positional,
            names=frozenset(p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)),
            var_keyword=any(p.kind is p.VAR_KEYWORD for p in parameters),
        )

    def first(self) -> str:
        return self.positional[0]


class LayerCall:
    """The arguments of one call, by name; ``call(function, layer)`` runs it with the edits.

    A name passed neither by position nor by keyword is absent: ``get`` returns ``None`` (the
    layers' default for every optional tensor), ``set_if_present`` leaves it out, and
    ``call[name] = value`` adds it as a keyword (a parameter of the signature, or ``**kwargs``).
    """

    def __init__(self, plan: CallPlan, args: tuple, kwargs: dict) -> None:
        self.plan = plan
        self.args = list(args)
        self.kwargs = dict(kwargs)

    def _position(self, name: str) -> int | None:
        positional = self.plan.positional
        if name in positional:
            index = positional.index(name)
            if index < len(self.args):
                return index
        return None

    def __contains__(self, name: str) -> bool:
        return self._position(name) is not None or name in self.kwargs

    def get(self, name: str, default=None):
        index = self._position(name)
        if index is not None:
            return self.args[index]
        return self.kwargs.get(name, default)

    def __getitem__(self, name: str):
        return self.get(name)

    def __setitem__(self, name: str, value) -> None:
        index = self._position(name)
        if index is not None:
            self.args[index] = value
        else:
            self.kwargs[name] = value

    def set_if_present(self, name: str, value) -> None:
        if name in self:
            self[name] = value

    def call(self, function, layer):
        return function(layer, *self.args, **self.kwargs)
