"""Typed wrappers over torch.ops.logitops, with their fake kernels and autograd registrations."""

from . import (
    bce_with_logits,
    beam_search,
    calibration,
    cross_entropy,
    distillation,
    linear_cross_entropy,
    logprobs,
    probs,
    sampling,
    speculative,
    token_logprobs,
    vocab_parallel,
)

__all__ = [
    "bce_with_logits",
    "beam_search",
    "calibration",
    "cross_entropy",
    "distillation",
    "linear_cross_entropy",
    "logprobs",
    "probs",
    "sampling",
    "speculative",
    "token_logprobs",
    "vocab_parallel",
]
