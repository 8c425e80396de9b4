"""PyTorch-style functions, one module per family. Signatures match `torch.nn.functional`;
extras are keyword-only.

- :mod:`.cross_entropy`: :func:`cross_entropy`
- :mod:`.bce_with_logits`: :func:`binary_cross_entropy_with_logits`
- :mod:`.beam_search`: :func:`beam_search_step`
- :mod:`.distillation`: :func:`kl_div_with_logits`, :func:`distillation_loss`
- :mod:`.linear_cross_entropy`: :func:`linear_cross_entropy`
- :mod:`.sampling`: :func:`filter_logits`, :func:`top_k_filter`, :func:`top_p_filter`,
  :func:`min_p_filter`, :func:`sample`
- :mod:`.speculative`: :func:`chain_speculative_sampling`,
  :func:`chain_speculative_sampling_from_logits`
- :mod:`.token_logprobs`: :func:`token_logprobs`, :func:`linear_token_logprobs`
- :mod:`.probs`: :func:`softmax`, :func:`sample_from_probs`, :func:`renorm_probs` and FlashInfer's
  names (:func:`top_k_renorm_probs`, :func:`top_p_sampling_from_probs`, ...)
- :mod:`.logprobs`: :func:`top_logprobs`, :func:`sample_with_logprobs`
"""

from __future__ import annotations

from .bce_with_logits import binary_cross_entropy_with_logits
from .beam_search import BeamSearchStep, beam_search_step
from .cross_entropy import cross_entropy
from .distillation import distillation_loss, kl_div_with_logits
from .linear_cross_entropy import linear_cross_entropy
from .logprobs import (
    SampleLogprobs,
    TopLogprobs,
    sample_with_logprobs,
    top_logprobs,
)
from .probs import (
    min_p_sampling_from_probs,
    renorm_probs,
    sample_from_probs,
    sampling_from_probs,
    softmax,
    top_k_mask_logits,
    top_k_renorm_probs,
    top_k_sampling_from_probs,
    top_k_top_p_sampling_from_probs,
    top_p_renorm_probs,
    top_p_sampling_from_probs,
)
from .sampling import filter_logits, min_p_filter, sample, top_k_filter, top_p_filter
from .speculative import chain_speculative_sampling, chain_speculative_sampling_from_logits
from .token_logprobs import linear_token_logprobs, token_logprobs

__all__ = [
    "BeamSearchStep",
    "beam_search_step",
    "binary_cross_entropy_with_logits",
    "chain_speculative_sampling",
    "chain_speculative_sampling_from_logits",
    "cross_entropy",
    "distillation_loss",
    "filter_logits",
    "kl_div_with_logits",
    "linear_cross_entropy",
    "linear_token_logprobs",
    "min_p_filter",
    "min_p_sampling_from_probs",
    "renorm_probs",
    "sample",
    "sample_from_probs",
    "sample_with_logprobs",
    "SampleLogprobs",
    "sampling_from_probs",
    "softmax",
    "token_logprobs",
    "top_k_filter",
    "top_k_mask_logits",
    "top_k_renorm_probs",
    "top_k_sampling_from_probs",
    "top_k_top_p_sampling_from_probs",
    "top_logprobs",
    "top_p_filter",
    "top_p_renorm_probs",
    "top_p_sampling_from_probs",
    "TopLogprobs",
]
