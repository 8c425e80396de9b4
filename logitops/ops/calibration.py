"""Typed wrapper and fake kernel of the calibration op (not differentiable: metrics only)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["calibration_row_stats"]


def calibration_row_stats(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of logits [N, C] (unit stride along C) with int64 labels [N], in one read of the
    row: ``stats`` [3, N] float64 holding the top-1 softmax probability, the NLL ``lse - z_y``
    and the Brier score ``sum_j (p_j - [j == y])**2`` (computed in the accumulation dtype), and
    ``prediction`` [N] int64, the first arg-max. A row with a NaN or +inf logit, or only -inf
    logits, has NaN statistics; an out-of-range label gives NaN NLL and Brier score."""
    return torch.ops.logitops.calibration_row_stats.default(logits, labels)


@torch.library.register_fake("logitops::calibration_row_stats")
def _calibration_row_stats_fake(logits, labels):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    torch._check(logits.shape[1] >= 1, lambda: "logits must have at least one class")
    torch._check(labels.dim() == 1, lambda: "labels must be 1-D")
    torch._check(labels.shape[0] == logits.shape[0], lambda: "labels must have one value per row")
    torch._check(labels.dtype == torch.int64, lambda: "labels must be int64")
    stats = logits.new_empty((3, logits.shape[0]), dtype=torch.float64)
    prediction = logits.new_empty((logits.shape[0],), dtype=torch.int64)
    return stats, prediction
