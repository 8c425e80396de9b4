"""Typed wrappers and fake kernels of the filtering and sampling ops (not differentiable)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FILTER_ORDERS", "filter_logits", "sample"]

# How top-k / top-p / min-p combine (the ops' `str order`; csrc/common/modes.h has the enum).
FILTER_ORDERS = ("hf", "vllm", "joint")


def filter_logits(
    logits: Tensor,
    logit_bias: Tensor | None,
    temperature: Tensor,
    top_k: Tensor,
    top_p: Tensor,
    min_p: Tensor,
    order: str,
    filter_value: float,
    min_tokens_to_keep: int,
    penalty_ids: Tensor | None = None,
    penalty_counts: Tensor | None = None,
    repetition_penalty: Tensor | None = None,
    presence_penalty: Tensor | None = None,
    frequency_penalty: Tensor | None = None,
    repetition_output_only: bool = False,
    typical_p: Tensor | None = None,
    epsilon_cutoff: Tensor | None = None,
    eta_cutoff: Tensor | None = None,
) -> Tensor:
    """logits [B, V]; logit_bias [1 or B, V] float32 (float64 for float64 logits); per-row
    temperature / top_p / min_p float64 [B], top_k int64 [B] (>= V: off); the HF-only warpers'
    typical_p / epsilon_cutoff / eta_cutoff float64 [B] or None (off). Computed in float32
    (float64 for float64 logits); returns the logits' dtype.

    Penalties (all or none): penalty_ids int64 [B, M], each row's distinct token ids (ids outside
    [0, V) skipped); penalty_counts int64 [B, M], their counts in the output (0: prompt only);
    float64 [B] repetition / presence / frequency penalties; repetition_output_only scales only
    the ids with a count (SGLang)."""
    return torch.ops.logitops.filter_logits.default(
        logits,
        logit_bias,
        temperature,
        top_k,
        top_p,
        min_p,
        order,
        filter_value,
        min_tokens_to_keep,
        penalty_ids,
        penalty_counts,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
        repetition_output_only,
        typical_p,
        epsilon_cutoff,
        eta_cutoff,
    )


def sample(
    logits: Tensor,
    logit_bias: Tensor | None,
    temperature: Tensor,
    top_k: Tensor,
    top_p: Tensor,
    min_p: Tensor,
    order: str,
    seed: Tensor,
    per_row_seeds: bool,
    penalty_ids: Tensor | None = None,
    penalty_counts: Tensor | None = None,
    repetition_penalty: Tensor | None = None,
    presence_penalty: Tensor | None = None,
    frequency_penalty: Tensor | None = None,
    repetition_output_only: bool = False,
    typical_p: Tensor | None = None,
    epsilon_cutoff: Tensor | None = None,
    eta_cutoff: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token ids int64 [B] (-1 for NaN rows) and their float32 log-probabilities. Penalties as
    for :func:`filter_logits`."""
    return torch.ops.logitops.sample.default(
        logits,
        logit_bias,
        temperature,
        top_k,
        top_p,
        min_p,
        order,
        seed,
        per_row_seeds,
        penalty_ids,
        penalty_counts,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
        repetition_output_only,
        typical_p,
        epsilon_cutoff,
        eta_cutoff,
    )


@torch.library.register_fake("logitops::filter_logits")
def _filter_logits_fake(
    logits,
    logit_bias,
    temperature,
    top_k,
    top_p,
    min_p,
    order,
    filter_value,
    min_tokens_to_keep,
    penalty_ids=None,
    penalty_counts=None,
    repetition_penalty=None,
    presence_penalty=None,
    frequency_penalty=None,
    repetition_output_only=False,
    typical_p=None,
    epsilon_cutoff=None,
    eta_cutoff=None,
):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("logitops::sample")
def _sample_fake(
    logits,
    logit_bias,
    temperature,
    top_k,
    top_p,
    min_p,
    order,
    seed,
    per_row_seeds,
    penalty_ids=None,
    penalty_counts=None,
    repetition_penalty=None,
    presence_penalty=None,
    frequency_penalty=None,
    repetition_output_only=False,
    typical_p=None,
    epsilon_cutoff=None,
    eta_cutoff=None,
):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    rows = logits.shape[0]
    return (
        logits.new_empty((rows,), dtype=torch.int64),
        logits.new_empty((rows,), dtype=torch.float32),
    )
