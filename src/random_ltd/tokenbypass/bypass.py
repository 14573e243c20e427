"""TokenBypass as a selection strategy of the one dropping layer (``random_ltd.layer``).

The kept tokens are chosen once per forward pass, from the input ids, before the model runs
(``Selector``); every layer of the bypassed range keeps those same tokens (``ChosenIndices``).
Each layer gathers them, runs on them and merges its output back, so a dropped token leaves
every layer of the range unchanged: exactly as if it bypassed the whole range, and bit for bit
what gathering once before the range and scattering once after it computes.
"""
from __future__ import annotations

import torch

from random_ltd.errors import RandomLTDError
from random_ltd.tokenbypass.importance import TokenImportance, special_mask, token_scores, top_k_indices


class ChosenIndices:
    """The strategy: the indices chosen for this forward pass (the context), for every layer."""

    needs_context = True

    def __call__(self, position: int, tokens: torch.Tensor, keep: int, indices: torch.Tensor | None):
        if indices is not None and tokens.shape[0] != indices.shape[0]:
            raise RandomLTDError(f"TokenBypass chose indices for {indices.shape[0]} sequences but the layer "
                                 f"got hidden states {tuple(tokens.shape)}")
        return indices


class Selector:
    """Chooses the kept positions of a batch: special ids first, then importance, padding last."""

    def __init__(self, importance: TokenImportance, special_ids: tuple[int, ...], pad_id: int | None):
        self.importance = importance
        self.special_ids = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
        self.pad_id = pad_id

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

    def __call__(self, input_ids: torch.Tensor, keep: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, keep)`` kept positions per sequence, sorted ascending."""
        scores = token_scores(input_ids, self.importance.on(input_ids.device),
                              special_mask(input_ids, self.special_ids_on(input_ids.device)),
                              self.padding(input_ids, attention_mask))
        return top_k_indices(scores, min(keep, input_ids.shape[1]))
