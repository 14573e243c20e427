"""The importance table against per-id loops, top-k against a sort by hand, the loss helpers
against per-position cross-entropy, and resume of the moving average."""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from random_ltd.errors import RandomLTDError
from random_ltd.tokenbypass import (
    TokenImportance,
    causal_lm_token_losses,
    mlm_token_losses,
    token_scores,
    top_k_indices,
)


def reference_update(scores: list[float], ids, losses, decay: float) -> list[float]:
    seen: dict[int, list[float]] = {}
    for token, loss in zip(ids.reshape(-1).tolist(), losses.reshape(-1).tolist(), strict=True):
        if token >= 0 and math.isfinite(loss):
            seen.setdefault(token, []).append(loss)
    return [decay * value + (1 - decay) * sum(seen[i]) / len(seen[i]) if i in seen else value
            for i, value in enumerate(scores)]


def random_step(gen: torch.Generator, vocab: int = 11):
    ids = torch.randint(-1, vocab, (3, 7), generator=gen).masked_fill_(torch.rand(3, 7, generator=gen) < 0.2, -100)
    losses = torch.rand(3, 7, generator=gen) * 5
    losses[0, 0] = float("nan")
    return ids, losses


def test_starts_constant_and_follows_per_id_means():
    gen = torch.Generator().manual_seed(0)
    importance = TokenImportance(11, init=7.0, decay=0.8)
    expected = [7.0] * 11
    assert importance.scores.tolist() == expected
    for _ in range(5):
        ids, losses = random_step(gen)
        importance.update(ids, losses)
        expected = reference_update(expected, ids, losses, 0.8)
    torch.testing.assert_close(importance.scores, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert importance.updates == 5


def test_unseen_ids_keep_their_value():
    importance = TokenImportance(5, init=3.0, decay=0.5)
    importance.update(torch.tensor([[1, 1, -100]]), torch.tensor([[2.0, 4.0, 100.0]]))
    assert importance.scores.tolist() == [3.0, 0.5 * 3.0 + 0.5 * 3.0, 3.0, 3.0, 3.0]


def test_resume_continues_exactly():
    gen = torch.Generator().manual_seed(1)
    steps = [random_step(gen) for _ in range(6)]
    straight = TokenImportance(11)
    for ids, losses in steps:
        straight.update(ids, losses)
    first = TokenImportance(11)
    for ids, losses in steps[:3]:
        first.update(ids, losses)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = TokenImportance(11, init=0.0, decay=0.1)
    resumed.load_state_dict(torch.load(buffer))
    for ids, losses in steps[3:]:
        resumed.update(ids, losses)
    assert torch.equal(resumed.scores, straight.scores) and resumed.updates == 6


@pytest.mark.parametrize("bad", [dict(vocab_size=0), dict(vocab_size=4, decay=1.0), dict(vocab_size=4, init=math.inf)])
def test_rejects_bad_settings(bad):
    with pytest.raises(RandomLTDError):
        TokenImportance(**bad)


def test_rejects_ids_outside_vocabulary_and_shape_mismatch():
    importance = TokenImportance(4)
    with pytest.raises(RandomLTDError, match="outside the vocabulary"):
        importance.update(torch.tensor([4]), torch.tensor([1.0]))
    with pytest.raises(RandomLTDError, match="same shape"):
        importance.update(torch.tensor([1, 2]), torch.tensor([1.0]))
    with pytest.raises(RandomLTDError, match="covers 5 ids"):
        importance.load_state_dict(TokenImportance(5).state_dict())


def reference_top_k(scores: torch.Tensor, keep: int) -> torch.Tensor:
    rows = []
    for row in scores.tolist():
        order = sorted(range(len(row)), key=lambda position: (-row[position], position))
        rows.append(sorted(order[:keep]))
    return torch.tensor(rows)


@pytest.mark.parametrize("keep", [1, 4, 9])
def test_top_k_matches_a_sort_by_hand(keep):
    gen = torch.Generator().manual_seed(keep)
    ids = torch.randint(0, 6, (5, 9), generator=gen)  # few ids: many ties
    importance = torch.rand(6, generator=gen)
    special = ids == 5
    padding = torch.rand(5, 9, generator=gen) < 0.3
    scores = token_scores(ids, importance, special, padding)
    assert torch.equal(top_k_indices(scores, keep), reference_top_k(scores, keep))


def test_scores_put_special_first_and_padding_last():
    ids = torch.tensor([[0, 1, 2, 1]])
    scores = token_scores(ids, torch.tensor([0.5, 0.25, 0.75]), ids == 1, torch.tensor([[False, False, False, True]]))
    assert scores.tolist() == [[0.5, math.inf, 0.75, -math.inf]]


def test_top_k_rejects_bad_keep():
    with pytest.raises(RandomLTDError):
        top_k_indices(torch.zeros(2, 3), 4)


def test_causal_losses_are_next_token_cross_entropy_credited_to_the_target():
    gen = torch.Generator().manual_seed(2)
    logits, ids = torch.randn(2, 5, 7, generator=gen), torch.randint(0, 7, (2, 5), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    targets, losses = causal_lm_token_losses(logits, ids, mask)
    for b in range(2):
        for t in range(4):
            if mask[b, t + 1]:
                assert targets[b, t] == ids[b, t + 1]
                expected = F.cross_entropy(logits[b, t], ids[b, t + 1]).item()
                assert losses[b, t].item() == pytest.approx(expected, rel=1e-5)
            else:
                assert targets[b, t] == -100 and losses[b, t] == 0


def test_mlm_losses_only_at_labelled_positions():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 4, 7, generator=gen)
    labels = torch.tensor([[-100, 3, -100, 6]])
    targets, losses = mlm_token_losses(logits, labels)
    assert torch.equal(targets, labels) and losses[0, 0] == 0 and losses[0, 2] == 0
    assert losses[0, 3].item() == pytest.approx(F.cross_entropy(logits[0, 3], torch.tensor(6)).item(), rel=1e-5)
