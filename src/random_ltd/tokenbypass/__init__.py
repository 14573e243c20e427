"""TokenBypass (Hou et al. 2022), the method random-LTD is compared against.

    handle = random_ltd.tokenbypass.apply(model, "middle", keep=seq_len // 2, special_ids=[cls, sep, mask])
    loss = model(input_ids=ids, labels=labels).loss; loss.backward(); ...
    handle.update(*mlm_token_losses(logits, labels))     # once per step: learn which ids are hard

A contiguous range of layers runs on the ``keep`` most important tokens of each sequence; the
others bypass the whole range and re-join before the next layer. See docs/tokenbypass.md.
"""
from random_ltd.tokenbypass.bypass import TokenBypass
from random_ltd.tokenbypass.importance import (
    TokenImportance,
    causal_lm_token_losses,
    mlm_token_losses,
    token_scores,
    top_k_indices,
)
from random_ltd.tokenbypass.surgery import NAMED_RANGES, TokenBypassHandle, apply, bypass_range, get_handle, remove

__all__ = [
    "NAMED_RANGES",
    "TokenBypass",
    "TokenBypassHandle",
    "TokenImportance",
    "apply",
    "bypass_range",
    "causal_lm_token_losses",
    "get_handle",
    "mlm_token_losses",
    "remove",
    "token_scores",
    "top_k_indices",
]
