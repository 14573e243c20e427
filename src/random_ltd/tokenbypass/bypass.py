"""TokenBypass as a selection strategy of the one dropping layer (``random_ltd.layer``).

The kept tokens are chosen once per forward pass, from the input ids, when the model's forward
begins (``begin_forward``: the forward's context); every layer of the bypassed range keeps those
same tokens (``select``). Each layer gathers them, runs on them and merges its output back, so a
dropped token leaves every layer of the range unchanged: exactly as if it bypassed the whole
range, and bit for bit what gathering once before the range and scattering once after it computes.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from random_ltd.errors import RandomLTDError
from random_ltd.strategies import LayerInfo, Strategy
from random_ltd.tokenbypass.importance import TokenImportance, special_mask, token_scores, top_k_indices


class TokenBypass(Strategy):
    """Keeps special ids first, then the ids with the highest importance, padding last.

    ``update(token_ids, per_token_loss)`` once per step learns the importance; ``indices`` holds
    the kept positions ``(B, k)`` of the latest training forward (``None`` before the first).
    """

    needs_context = True

    def __init__(self, importance: TokenImportance, special_ids: tuple[int, ...] = (), pad_id: int | None = None):
        self.importance = importance
        self.special_ids = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        self.pad_id = pad_id
        self.indices: torch.Tensor | None = None

    def begin_forward(self, inputs: Mapping[str, object], keep: int) -> torch.Tensor:
        input_ids = inputs.get("input_ids")
        if not isinstance(input_ids, torch.Tensor):
            raise RandomLTDError("TokenBypass ranks tokens by their ids: call the model with input_ids")
        self.indices = self.choose(input_ids, keep, inputs.get("attention_mask"))
        return self.indices

    def select(self, layer: LayerInfo, tokens: torch.Tensor, keep: int, indices: torch.Tensor | None):
        if indices is not None and tokens.shape[0] != indices.shape[0]:
            raise RandomLTDError(f"TokenBypass chose indices for {indices.shape[0]} sequences but the layer "
                                 f"got hidden states {tuple(tokens.shape)}")
        return indices

    @property
    def selector(self) -> TokenBypass:
        """The strategy itself (``handle.selector`` before the one surgery: the special ids, the padding rule)."""
        return self

    def update(self, token_ids: torch.Tensor, per_token_loss: torch.Tensor) -> None:
        self.importance.update(token_ids, per_token_loss)

    def state_dict(self) -> dict:
        return {"importance": self.importance.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.importance.load_state_dict(state["importance"])

    def special_ids_on(self, device: torch.device) -> torch.Tensor:
        """The special ids on ``device``, moved there once (not in every forward pass)."""
        if self.special_ids.device != device:
            self.special_ids = self.special_ids.to(device)
        return self.special_ids

    def padding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        padding = None if attention_mask is None else attention_mask == 0
        if self.pad_id is not None:
            by_id = input_ids == self.pad_id
            padding = by_id if padding is None else padding | by_id
        return padding

    def choose(self, input_ids: torch.Tensor, keep: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, keep)`` kept positions per sequence, sorted ascending."""
        scores = token_scores(input_ids, self.importance.on(input_ids.device),
                              special_mask(input_ids, self.special_ids_on(input_ids.device)),
                              self.padding(input_ids, attention_mask))
        return top_k_indices(scores, min(keep, input_ids.shape[1]))
