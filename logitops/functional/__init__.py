"""PyTorch-style functions, one module per family. Signatures match `torch.nn.functional`;
extras are keyword-only.

- :mod:`.cross_entropy`: :func:`cross_entropy`
- :mod:`.bce_with_logits`: :func:`binary_cross_entropy_with_logits`
- :mod:`.beam_search`: :func:`beam_search_step`
- :mod:`.distillation`: :func:`kl_div_with_logits`, :func:`distillation_loss`
- :mod:`.linear_cross_entropy`: :func:`linear_cross_entropy`
- :mod:`.sampling`: :func:`filter_logits`, :func:`top_k_filter`, :func:`top_p_filter`,
  :func:`min_p_filter`, :func:`sample`
- :mod:`.token_logprobs`: :func:`token_logprobs`, :func:`linear_token_logprobs`
"""

from __future__ import annotations

from .bce_with_logits import binary_cross_entropy_with_logits
from .beam_search import BeamSearchStep, beam_search_step
from .cross_entropy import cross_entropy
from .distillation import distillation_loss, kl_div_with_logits
from .linear_cross_entropy import linear_cross_entropy
from .sampling import filter_logits, min_p_filter, sample, top_k_filter, top_p_filter
from .token_logprobs import linear_token_logprobs, token_logprobs

__all__ = [
    "BeamSearchStep",
    "beam_search_step",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "distillation_loss",
    "filter_logits",
    "kl_div_with_logits",
    "linear_cross_entropy",
    "linear_token_logprobs",
    "min_p_filter",
    "sample",
    "token_logprobs",
    "top_k_filter",
    "top_p_filter",
]
