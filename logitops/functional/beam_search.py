"""One beam-search step: beam_search_step (ops.beam_search).

Semantics (see the README, "Beam search"): the score of candidate (beam b, token t) of a batch
item is ``log_softmax(logits[b])[t] + beam_scores[b]``, computed in float32 (float64 for float64
logits); the step returns each batch item's best ``num_candidates`` candidates over its
``num_beams x V``, best first, equal scores by flattened index ``b * V + t``, lowest first.
"""

from __future__ import annotations

from numbers import Integral
from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import check_floating, check_same_device
from ..ops import beam_search as _beam_ops

__all__ = ["BeamSearchStep", "beam_search_step"]


class BeamSearchStep(NamedTuple):
    """What :func:`beam_search_step` returns, each ``[batch, width]``."""

    scores: Tensor
    """The candidates' running scores, float32 (float64 for float64 logits)."""
    beam_indices: Tensor
    """int64, the beam (``0 .. num_beams - 1`` within the batch item) each candidate extends."""
    tokens: Tensor
    """int64, the token id each candidate appends."""


def _int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def beam_search_step(
    logits: Tensor,
    beam_scores: Tensor,
    num_beams: int,
    *,
    num_candidates: int | None = None,
) -> BeamSearchStep:
    """Select the next beam-search candidates in one pass over the logits.

    Fuses ``log_softmax(logits, -1)``, the addition of each row's running beam score and
    ``torch.topk`` over each batch item's flattened ``num_beams x V`` scores, which is how
    transformers' beam search selects its candidates (``beam = index // V``,
    ``token = index % V``). Each row is read once: the log-softmax's row constant does not change
    the order within a row, so each row keeps its best few logits while it accumulates its
    log-sum-exp, and each batch item then ranks the few scored candidates of its beams.

    Parameters
    ----------
    logits : Tensor
        ``[batch * num_beams, V]`` (V >= 1), float32, float64, bfloat16 or float16; the rows of
        one batch item are consecutive, as in transformers' flattened beams.
    beam_scores : Tensor
        The running score of each row, ``[batch * num_beams]`` or ``[batch, num_beams]``,
        floating; used in float32 (float64 for float64 logits).
    num_beams : int
        Beams per batch item (>= 1, dividing the number of rows).
    num_candidates : int, optional
        Candidates to keep per batch item, in ``[1, 64]``; ``2 * num_beams`` by default (what
        transformers keeps with at most one EOS token). Fewer come back when
        ``num_beams * V`` is smaller.

    Returns
    -------
    BeamSearchStep
        ``(scores, beam_indices, tokens)``, each ``[batch, min(num_candidates, num_beams * V)]``,
        best first. Equal scores rank by flattened index ``beam * V + token``, lowest first; NaN
        scores rank after every number. A row of all ``-inf`` logits scores ``-inf`` everywhere
        (``log_softmax`` would give NaN); a row with NaN or ``+inf`` logits, or a NaN or ``+inf``
        beam score, scores NaN everywhere; such constant rows offer their lowest token ids.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    >>> step = logitops.beam_search_step(logits, torch.tensor([0.0, -1e9]), num_beams=2)
    >>> step.beam_indices.tolist(), step.tokens.tolist()
    ([[0, 0, 0, 1]], [[1, 2, 0, 0]])
    >>> ref = torch.log_softmax(logits, -1)[0].sort(descending=True).values
    >>> torch.allclose(step.scores[0, :3], ref)
    True
    """
    check_floating("logits", logits)
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(
            f"logits must be [batch * num_beams, vocab] with vocab >= 1, got {tuple(logits.shape)}"
        )
    num_beams = _int("num_beams", num_beams, 1)
    rows = logits.shape[0]
    if rows % num_beams != 0:
        raise ValueError(f"num_beams must divide the {rows} rows of logits, got {num_beams}")
    if num_candidates is None:
        num_candidates = min(2 * num_beams, _beam_ops.MAX_CANDIDATES)
    num_candidates = _int("num_candidates", num_candidates, 1, _beam_ops.MAX_CANDIDATES)
    if not isinstance(beam_scores, Tensor):
        raise TypeError(f"beam_scores must be a torch.Tensor, got {type(beam_scores).__name__}")
    if not beam_scores.is_floating_point():
        raise TypeError(f"beam_scores must be floating point, got {beam_scores.dtype}")
    if beam_scores.shape not in ((rows,), (rows // num_beams, num_beams)):
        raise ValueError(
            f"beam_scores must be [{rows}] or [{rows // num_beams}, {num_beams}], got "
            f"{tuple(beam_scores.shape)}"
        )
    check_same_device("beam_scores", beam_scores, logits)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    scores, beams, tokens = _beam_ops.beam_search_step(
        logits, beam_scores.reshape(rows).to(acc), num_beams, num_candidates
    )
    return BeamSearchStep(scores, beams, tokens)
