"""Typed wrappers and fake kernels of the vocabulary-parallel cross-entropy ops
(csrc/*/vocab_parallel.*). Their autograd, with the collectives, is in logitops.distributed."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["vocab_parallel_cross_entropy_backward", "vocab_parallel_cross_entropy_stats"]


def vocab_parallel_cross_entropy_stats(logits: Tensor, target: Tensor, vocab_start: int) -> Tensor:
    """[3, N] float64, so that combining ranks loses no digits: the slice's lse, the target's
    logit (0 when the target class is not in [vocab_start, vocab_start + V_local)) and the sum of
    the slice's logits."""
    return torch.ops.logitops.vocab_parallel_cross_entropy_stats.default(
        logits, target, vocab_start
    )


def vocab_parallel_cross_entropy_backward(
    grad_rows: Tensor,
    logits: Tensor,
    target: Tensor,
    lse: Tensor,
    vocab_start: int,
    num_classes: int,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
) -> Tensor:
    """The slice [N, V_local] of the full gradient for per-row upstream gradients grad_rows [N]
    and the global lse [N] (both accumulation dtype)."""
    return torch.ops.logitops.vocab_parallel_cross_entropy_backward.default(
        grad_rows,
        logits,
        target,
        lse,
        vocab_start,
        num_classes,
        ignore_index,
        label_smoothing,
        z_loss,
    )


@torch.library.register_fake("logitops::vocab_parallel_cross_entropy_stats")
def _stats_fake(logits, target, vocab_start):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    return logits.new_empty((3, logits.shape[0]), dtype=torch.float64)


@torch.library.register_fake("logitops::vocab_parallel_cross_entropy_backward")
def _backward_fake(
    grad_rows, logits, target, lse, vocab_start, num_classes, ignore_index, label_smoothing, z_loss
):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    return logits.new_empty(logits.shape)
