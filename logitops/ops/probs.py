"""Typed wrappers and fake kernels of the probability ops: the temperature softmax,
renormalized probabilities and sampling from probabilities (not differentiable)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["probs_renorm", "probs_sample", "softmax"]


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def softmax(logits: Tensor, temperature: Tensor) -> Tensor:
    """softmax(logits [B, V] / temperature float64 [B]) in float32 (float64 for float64)."""
    return torch.ops.logitops.softmax.default(logits, temperature)


def probs_renorm(probs: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor, order: str) -> Tensor:
    """probs [B, V] renormalized over what the filters keep (top_k int64 [B], top_p / min_p
    float64 [B]); the probs' dtype."""
    return torch.ops.logitops.probs_renorm.default(probs, top_k, top_p, min_p, order)


def probs_sample(
    probs: Tensor,
    top_k: Tensor,
    top_p: Tensor,
    min_p: Tensor,
    order: str,
    seed: Tensor,
    per_row_seeds: bool,
) -> Tensor:
    """Token ids int64 [B] drawn from the filtered probabilities (-1 for invalid rows)."""
    return torch.ops.logitops.probs_sample.default(
        probs, top_k, top_p, min_p, order, seed, per_row_seeds
    )


@torch.library.register_fake("logitops::softmax")
def _softmax_fake(logits, temperature):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    return logits.new_empty(logits.shape, dtype=_accumulation_dtype(logits.dtype))


@torch.library.register_fake("logitops::probs_renorm")
def _probs_renorm_fake(probs, top_k, top_p, min_p, order):
    torch._check(probs.dim() == 2, lambda: "probs must be 2-D")
    return probs.new_empty(probs.shape)


@torch.library.register_fake("logitops::probs_sample")
def _probs_sample_fake(probs, top_k, top_p, min_p, order, seed, per_row_seeds):
    torch._check(probs.dim() == 2, lambda: "probs must be 2-D")
    return probs.new_empty((probs.shape[0],), dtype=torch.int64)
