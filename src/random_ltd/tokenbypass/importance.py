"""TokenBypass's token importance (Hou et al. 2022) and its top-k selection.

The importance of a vocabulary id is an exponential moving average of the loss the model makes
when it predicts that id (masked-LM loss, or next-token loss for a causal LM). Tokens whose id
is hard to predict are kept in the bypassed layers; easy ones skip them. Published defaults of
the reference implementation: every id starts at 10.0, and the average decays by 0.995 per step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from random_ltd.errors import RandomLTDError

IGNORE = -100


class TokenImportance:
    """Per-id moving average of the prediction loss; a plain object, not a module.

    It holds no ``nn.Module`` buffer, so a model's ``state_dict`` keys stay unchanged; resume with
    its own ``state_dict`` / ``load_state_dict``. ``update`` is called once per training step.
    """

    def __init__(self, vocab_size: int, init: float = 10.0, decay: float = 0.995):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise RandomLTDError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        if not math.isfinite(init):
            raise RandomLTDError(f"init must be a finite number, got {init!r}")
        if not 0.0 <= decay < 1.0:
            raise RandomLTDError(f"decay must lie in [0, 1), got {decay!r}")
        self.init = float(init)
        self.decay = float(decay)
        self.scores = torch.full((vocab_size,), self.init)
        self.updates = 0

    @property
    def vocab_size(self) -> int:
        return self.scores.numel()

    def on(self, device: torch.device) -> torch.Tensor:
        """The scores on ``device`` (moved there once, then kept there)."""
        if self.scores.device != device:
            self.scores = self.scores.to(device)
        return self.scores

    @torch.no_grad()
    def update(self, token_ids: torch.Tensor, per_token_loss: torch.Tensor) -> None:
        """One step: every id seen with a loss moves toward the mean loss it had in this batch.

        ``token_ids`` and ``per_token_loss`` have the same shape; entries whose id is negative
        (``-100``: not predicted) or whose loss is not finite are ignored.
        """
        if token_ids.shape != per_token_loss.shape:
            raise RandomLTDError(f"token_ids {tuple(token_ids.shape)} and per_token_loss "
                                 f"{tuple(per_token_loss.shape)} must have the same shape")
        ids = token_ids.reshape(-1)
        losses = per_token_loss.detach().reshape(-1).float()
        valid = (ids >= 0) & torch.isfinite(losses)
        if ids.device.type == "cpu" and ids.numel() and int(ids.max()) >= self.vocab_size:  # no device sync
            raise RandomLTDError(f"token id {int(ids.max())} is outside the vocabulary of {self.vocab_size}")
        # Masks instead of boolean indexing: the same sums, without a device-to-host sync.
        ids = torch.where(valid, ids, 0)
        scores = self.on(ids.device)
        totals = torch.zeros_like(scores).index_add_(0, ids, torch.where(valid, losses, 0.0))
        counts = torch.zeros_like(scores).index_add_(0, ids, valid.to(scores.dtype))
        moved = self.decay * scores + (1.0 - self.decay) * (totals / counts.clamp_min(1.0))
        scores.copy_(torch.where(counts > 0, moved, scores))
        self.updates += 1

    def state_dict(self) -> dict:
        return {"scores": self.scores.detach().cpu().clone(), "init": self.init, "decay": self.decay,
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        scores = torch.as_tensor(state["scores"], dtype=torch.float32)
        if scores.shape != self.scores.shape:
            raise RandomLTDError(f"saved importance covers {scores.numel()} ids, this one {self.vocab_size}")
        self.scores = scores.to(self.scores.device).clone()
        self.init, self.decay, self.updates = float(state["init"]), float(state["decay"]), int(state["updates"])


def token_scores(input_ids: torch.Tensor, importance: torch.Tensor, special: torch.Tensor | None = None,
                 padding: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, s)`` score of each position: its id's importance; ``+inf`` for special tokens and
    ``-inf`` for padding (padding wins: a pad id that is also special is still padding)."""
    scores = importance[input_ids]
    if special is not None:
        scores = scores.masked_fill(special, math.inf)
    if padding is not None:
        scores = scores.masked_fill(padding, -math.inf)
    return scores


def top_k_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` highest-scoring positions per row, sorted ascending (so a causal layer on the
    subsequence stays causal). Ties go to the earlier position, so the choice is deterministic."""
    if not 1 <= keep <= scores.shape[1]:
        raise RandomLTDError(f"keep must lie in [1, {scores.shape[1]}], got {keep}")
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, :keep]
    return order.sort(dim=1).values


def special_mask(input_ids: torch.Tensor, special_ids: torch.Tensor) -> torch.Tensor | None:
    if special_ids.numel() == 0:
        return None
    return torch.isin(input_ids, special_ids.to(input_ids.device))


def causal_lm_token_losses(logits: torch.Tensor, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target_ids, losses)``, both ``(B, s-1)``: the loss of predicting each next token,
    credited to the id being predicted; padded targets get id ``-100``."""
    targets = input_ids[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, IGNORE)
    losses = F.cross_entropy(logits[:, :-1].detach().float().transpose(1, 2), targets, ignore_index=IGNORE,
                             reduction="none")
    return targets, losses


def mlm_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, losses)``, both ``(B, s)``: the masked-LM loss at each predicted position,
    credited to the original id there; unpredicted positions keep label ``-100``."""
    losses = F.cross_entropy(logits.detach().float().transpose(1, 2), labels, ignore_index=IGNORE,
                             reduction="none")
    return labels, losses
