"""Typed wrapper and fake kernel of top_logprobs (not differentiable)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MAX_TOP_LOGPROBS", "top_logprobs"]

# The most top log-probabilities one row returns (csrc/host/probs_checks.h's kMaxTopLogprobs).
MAX_TOP_LOGPROBS = 1024


def top_logprobs(
    logits: Tensor, temperature: Tensor, token: Tensor | None, num_logprobs: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per row of z = logits [B, V] / temperature float64 [B]: the num_logprobs largest z [B, N]
    (float32; float64 for float64 logits; -inf past V) and their ids int64 (-1 past V), the
    log-sum-exp [B], token's z [B] and its vLLM rank int64 [B] (-1 for a token outside [0, V);
    both [0] without token)."""
    return torch.ops.logitops.top_logprobs.default(logits, temperature, token, num_logprobs)


@torch.library.register_fake("logitops::top_logprobs")
def _top_logprobs_fake(logits, temperature, token, num_logprobs):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    rows = logits.shape[0]
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return (
        logits.new_empty((rows, num_logprobs), dtype=acc),
        logits.new_empty((rows, num_logprobs), dtype=torch.int64),
        logits.new_empty((rows,), dtype=acc),
        logits.new_empty((rows if token is not None else 0,), dtype=acc),
        logits.new_empty((rows if token is not None else 0,), dtype=torch.int64),
    )
