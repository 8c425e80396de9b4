"""Typed wrapper and fake kernel of the beam-search step op (not differentiable)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MAX_CANDIDATES", "beam_search_step"]

# csrc/common/beam_search_math.h's kMaxBeamCandidates.
MAX_CANDIDATES = 64


def beam_search_step(
    logits: Tensor, beam_scores: Tensor, num_beams: int, num_candidates: int
) -> tuple[Tensor, Tensor, Tensor]:
    """logits [B * K, V] (V >= 1), beam_scores [B * K] in float32 (float64 for float64 logits).
    Returns scores [B, W] in that dtype, beam indices and token ids int64 [B, W], W =
    min(num_candidates, K * V), best first."""
    return torch.ops.logitops.beam_search_step.default(
        logits, beam_scores, num_beams, num_candidates
    )


@torch.library.register_fake("logitops::beam_search_step")
def _beam_search_step_fake(logits, beam_scores, num_beams, num_candidates):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    torch._check(num_beams >= 1, lambda: "num_beams must be >= 1")
    batch = logits.shape[0] // num_beams
    width = min(num_candidates, num_beams * logits.shape[1])
    return (
        logits.new_empty((batch, width), dtype=beam_scores.dtype),
        logits.new_empty((batch, width), dtype=torch.int64),
        logits.new_empty((batch, width), dtype=torch.int64),
    )
