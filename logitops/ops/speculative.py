"""Typed wrapper and fake kernel of the chain speculative sampling op (not differentiable)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["speculative_sample"]


def speculative_sample(
    target: Tensor,
    draft: Tensor | None,
    draft_token_ids: Tensor,
    temperature: Tensor,
    logits: bool,
    seed: Tensor,
    per_row_seeds: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """target [B, S + 1, V] and draft [B, S, V] (or None: point masses on the drafts)
    probabilities, or logits when ``logits`` (softmax of logits / temperature, temperature
    float64 [B], 0: greedy); draft_token_ids int64 [B, S]; seed int64 [B]. Returns tokens int64
    [B, S + 1] (-1 after the first rejection), accepted and emitted draft counts int64 [B]."""
    return torch.ops.logitops.speculative_sample.default(
        target, draft, draft_token_ids, temperature, logits, seed, per_row_seeds
    )


@torch.library.register_fake("logitops::speculative_sample")
def _speculative_sample_fake(target, draft, draft_token_ids, temperature, logits, seed, per_row):
    torch._check(target.dim() == 3, lambda: "target must be 3-D")
    rows, positions = target.shape[0], target.shape[1]
    return (
        target.new_empty((rows, positions), dtype=torch.int64),
        target.new_empty((rows,), dtype=torch.int64),
        target.new_empty((rows,), dtype=torch.int64),
    )
