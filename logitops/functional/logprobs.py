"""Log-probabilities of a decoding step, with vLLM's (v1) as the model: the top-N
log-probabilities with their token ids, a given token's log-probability and its rank, in one
kernel over the logits (ops.logprobs); and :func:`sample_with_logprobs`, which samples as
:func:`logitops.sample` and returns these in one of vLLM's four ``logprobs_mode``\\ s.

Semantics (see the README, "Logprob modes"): the rank is vLLM's, the number of tokens whose
log-probability is >= the token's (1 for the most likely, ties counted against it); top-N ties
go to the lower token id; N > V pads with id -1 and -inf; a row containing NaN has NaN
log-probabilities, ids -1 and rank -1; a token outside [0, V) (sample's -1) has log-probability
NaN and rank -1.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import check_floating, check_same_device
from ..ops import logprobs as _logprobs_ops
from .sampling import _per_row, filter_logits, sample

__all__ = [
    "LOGPROBS_MODES",
    "SampleLogprobs",
    "TopLogprobs",
    "sample_with_logprobs",
    "top_logprobs",
]

# vLLM's LogprobsMode names.
LOGPROBS_MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")


class TopLogprobs(NamedTuple):
    """What :func:`top_logprobs` returns.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.top_logprobs(torch.zeros(1, 4), 1).top_ids
    tensor([[0]])
    """

    top_logprobs: Tensor  # [B, N], float32 (float64 for float64 logits)
    top_ids: Tensor  # [B, N], int64
    token_logprob: Tensor | None  # [B]; None without token
    token_rank: Tensor | None  # [B], int64; None without token


class SampleLogprobs(NamedTuple):
    """What :func:`sample_with_logprobs` returns: the tokens and their log-probabilities.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.sample_with_logprobs(torch.tensor([[0.0, 9.0]]), temperature=0.0).tokens
    tensor([1])
    """

    tokens: Tensor  # [B], int64
    top_logprobs: Tensor  # [B, N]: log-probabilities, or logits in the *_logits modes
    top_ids: Tensor  # [B, N], int64
    token_logprob: Tensor  # [B]: the sampled token's, same kind as top_logprobs
    token_rank: Tensor  # [B], int64


def _num_logprobs(num_logprobs) -> int:
    if isinstance(num_logprobs, bool) or not isinstance(num_logprobs, Integral):
        raise TypeError(f"num_logprobs must be an int, got {num_logprobs!r}")
    if num_logprobs < 0:
        raise ValueError(f"num_logprobs must be >= 0, got {num_logprobs}")
    return int(num_logprobs)


def _token(token, rows: int, like: Tensor) -> Tensor | None:
    if token is None:
        return None
    if not isinstance(token, Tensor) or token.dim() != 1 or token.shape[0] != rows:
        raise ValueError(f"token must be an int64 tensor of shape [{rows}], got {token!r}")
    if token.is_floating_point() or token.dtype == torch.bool:
        raise TypeError(f"token must hold integers, got {token.dtype}")
    check_same_device("token", token, like)
    return token.to(torch.int64)


def _top(logits2d: Tensor, temperature: Tensor, token, num_logprobs: int, normalize: bool):
    vocab = logits2d.shape[1]
    if min(num_logprobs, vocab) > _logprobs_ops.MAX_TOP_LOGPROBS:
        raise ValueError(
            f"num_logprobs must be at most {_logprobs_ops.MAX_TOP_LOGPROBS} (or the vocabulary "
            f"size, {vocab}), got {num_logprobs}"
        )
    values, ids, lse, token_value, rank = _logprobs_ops.top_logprobs(
        logits2d, temperature, token, num_logprobs
    )
    if normalize:
        # z - lse rounded once from float64: both are exact in it.
        values = (values.double() - lse.double().unsqueeze(1)).to(values.dtype)
        if token is not None:
            token_value = (token_value.double() - lse.double()).to(token_value.dtype)
    if token is None:
        return values, ids, None, None
    return values, ids, token_value, rank


def top_logprobs(
    logits: Tensor,
    num_logprobs: int,
    *,
    temperature: float | Tensor = 1.0,
    token: Tensor | None = None,
) -> TopLogprobs:
    r"""The ``num_logprobs`` largest log-probabilities of ``log_softmax(logits / temperature)``
    per row with their token ids, and ``token``'s log-probability and vLLM rank, in one kernel
    (no [B, V] output, no sort of the vocabulary, no host sync).

    Computed in float32 (float64 for float64 logits). Ties among the top values are ordered by
    token id. ``num_logprobs`` may exceed the vocabulary: the extra columns hold id -1 and
    -inf. The rank is the number of tokens whose log-probability is >= the token's (vLLM's
    ``batched_count_greater_than``), compared on ``logits / temperature`` exactly. Rows with
    NaN give NaN, ids -1, rank -1; a token outside [0, V) gives NaN and rank -1.

    Parameters
    ----------
    logits : Tensor
        [V] or [B, V].
    num_logprobs : int
        N >= 0 (at most 1024 below the vocabulary size).
    temperature : float or Tensor
        > 0, a number or a per-row tensor [B].
    token : Tensor, optional
        int64 [B]: the tokens whose log-probability and rank to return (without it, those
        fields are None).

    Returns
    -------
    TopLogprobs
        ``(top_logprobs [B, N], top_ids [B, N], token_logprob [B], token_rank [B])``.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> x = torch.tensor([[0.0, 2.0, 1.0, 2.0]])
    >>> out = logitops.top_logprobs(x, 2, token=torch.tensor([2]))
    >>> out.top_ids, out.token_rank
    (tensor([[1, 3]]), tensor([3]))
    >>> torch.allclose(out.top_logprobs, torch.log_softmax(x, -1)[:, [1, 3]])
    True
    """
    check_floating("logits", logits)
    squeeze = logits.dim() == 1
    logits2d = logits.unsqueeze(0) if squeeze else logits
    if logits2d.dim() != 2 or logits2d.shape[1] == 0:
        raise ValueError(f"logits must be [vocab] or [batch, vocab], got {tuple(logits.shape)}")
    rows = logits2d.shape[0]
    n = _num_logprobs(num_logprobs)
    temp = _per_row(
        "temperature", temperature, rows, logits2d, integer=False, default=1.0, low=0.0,
        high=math.inf, low_open=True,
    )  # fmt: skip
    if squeeze and isinstance(token, Tensor) and token.dim() == 0:
        token = token.unsqueeze(0)
    values, ids, token_value, rank = _top(logits2d, temp, _token(token, rows, logits2d), n, True)
    if squeeze:
        first = lambda t: None if t is None else t[0]  # noqa: E731
        return TopLogprobs(values[0], ids[0], first(token_value), first(rank))
    return TopLogprobs(values, ids, token_value, rank)


def sample_with_logprobs(
    logits: Tensor,
    *,
    num_logprobs: int = 0,
    logprobs_mode: str = "raw_logprobs",
    temperature: float | Tensor = 1.0,
    top_k: int | Tensor | None = None,
    top_p: float | Tensor | None = None,
    min_p: float | Tensor | None = None,
    logit_bias: Tensor | None = None,
    order: str = "hf",
    seed: int | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SampleLogprobs:
    r"""Samples as :func:`logitops.sample` (same arguments, same tokens) and returns the
    sampled tokens' log-probabilities, ranks and the top-N, in one of vLLM's ``logprobs_mode``\s:

    - ``"raw_logprobs"`` (vLLM's default): ``log_softmax`` of the logits as given, before the
      bias, the temperature and the filters; one extra read of the logits, no [B, V] tensor.
    - ``"raw_logits"``: the logits themselves (in float32; float64 for float64 logits).
    - ``"processed_logprobs"``: ``log_softmax`` of the logits the token was drawn from: biased,
      temperature-scaled and filtered (removed tokens -inf), in float32 as vLLM and
      :func:`logitops.sample` compute them; so ``token_logprob`` is ``sample``'s own log-prob.
    - ``"processed_logits"``: those processed logits.

    The processed modes filter the logits into one [B, V] float32 tensor first. Greedy rows
    (temperature 0) are processed at temperature 1 with their filters, as vLLM processes the
    greedy rows of a mixed batch. Ranks are vLLM's (see :func:`top_logprobs`), in the mode's
    distribution. A row whose token is -1 (NaN) gets log-probability NaN and rank -1.

    Parameters
    ----------
    logits : Tensor
        [B, V] (or [V]).
    num_logprobs : int
        N >= 0 top entries per row.
    logprobs_mode : {"raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits"}
        vLLM's names.
    temperature, top_k, top_p, min_p, logit_bias, order, seed, generator
        As for :func:`logitops.sample`.

    Returns
    -------
    SampleLogprobs
        ``(tokens, top_logprobs, top_ids, token_logprob, token_rank)``.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> x = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    >>> out = logitops.sample_with_logprobs(x, num_logprobs=2, top_k=1, seed=0)
    >>> out.tokens, out.top_ids, out.token_rank
    (tensor([1]), tensor([[1, 2]]), tensor([1]))
    >>> torch.allclose(out.token_logprob, torch.log_softmax(x, -1)[:, 1])  # raw: before top-k
    True
    >>> logitops.sample_with_logprobs(
    ...     x, top_k=1, seed=0, logprobs_mode="processed_logprobs"
    ... ).token_logprob
    tensor([0.])
    """
    if logprobs_mode not in LOGPROBS_MODES:
        raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
    n = _num_logprobs(num_logprobs)
    check_floating("logits", logits)
    squeeze = logits.dim() == 1
    logits2d = logits.unsqueeze(0) if squeeze else logits
    tokens = sample(
        logits2d,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        logit_bias=logit_bias,
        order=order,
        seed=seed,
        generator=generator,
    )
    rows = logits2d.shape[0]
    ones = torch.ones(rows, dtype=torch.float64, device=logits2d.device)
    if logprobs_mode.startswith("raw"):
        source = logits2d
    else:
        # Greedy rows (temperature 0) are processed at temperature 1.
        if isinstance(temperature, Tensor):
            processed_t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
        else:
            processed_t = temperature if temperature > 0 else 1.0
        compute = torch.float64 if logits2d.dtype == torch.float64 else torch.float32
        source = filter_logits(
            logits2d.to(compute),
            temperature=processed_t,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            logit_bias=logit_bias,
            order=order,
        )
    values, ids, token_value, rank = _top(
        source, ones, tokens, n, normalize=logprobs_mode.endswith("logprobs")
    )
    if squeeze:
        return SampleLogprobs(tokens[0], values[0], ids[0], token_value[0], rank[0])
    return SampleLogprobs(tokens, values, ids, token_value, rank)
