"""Probabilities in and out, with FlashInfer's ``flashinfer.sampling`` API as the model: a fused
temperature softmax, sampling from probabilities (plain, top-k, top-p, min-p, top-k + top-p),
renormalized top-k / top-p probabilities and top-k masking of logits (ops.probs).

Semantics (see the README, "Probabilities in and out"): the filters are those of
:func:`logitops.filter_logits` applied to ``log(probs)`` (ties at a cut kept together, top-p
renormalized over top-k's survivors for ``order="hf"``), and sampling is
:func:`logitops.sample`'s seeded exponential race on ``log(probs)``: ``sampling_from_probs(
softmax(x), seed=s)`` draws the token ``sample(x, seed=s)`` draws. Rows need not be normalized
(every decision is invariant to a row's scale). A row with a negative, NaN or infinite
probability is invalid: sampling gives -1 and renormalizing a row of NaN; so does a row of zeros.
No host sync, no sort of the vocabulary.
"""

from __future__ import annotations

import math
from numbers import Integral

import torch
from torch import Tensor

from .._validation import check_floating, check_same_device
from ..ops import probs as _probs_ops
from .sampling import _order, _per_row, filter_logits

__all__ = [
    "min_p_sampling_from_probs",
    "renorm_probs",
    "sample_from_probs",
    "sampling_from_probs",
    "softmax",
    "top_k_mask_logits",
    "top_k_renorm_probs",
    "top_k_sampling_from_probs",
    "top_k_top_p_sampling_from_probs",
    "top_p_renorm_probs",
    "top_p_sampling_from_probs",
]

# FlashInfer's filter_apply_order names and ours.
FILTER_APPLY_ORDERS = {"top_k_first": "hf", "joint": "joint"}


def _rows(name: str, x: Tensor) -> tuple[Tensor, bool]:
    check_floating(name, x)
    if x.dim() == 1:
        x, squeeze = x.unsqueeze(0), True
    elif x.dim() == 2:
        squeeze = False
    else:
        raise ValueError(f"{name} must be [vocab] or [batch, vocab], got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have a non-empty vocabulary dimension")
    return x, squeeze


def _filters(probs: Tensor, top_k, top_p, min_p) -> tuple[Tensor, Tensor, Tensor]:
    rows, vocab = probs.shape
    k = _per_row("top_k", top_k, rows, probs, integer=True, default=vocab, low=1, high=math.inf)
    p = _per_row("top_p", top_p, rows, probs, integer=False, default=1.0, low=0.0, high=1.0)
    mp = _per_row("min_p", min_p, rows, probs, integer=False, default=0.0, low=0.0, high=1.0)
    return k, p, mp


def _seeds(seed, generator, rows: int, like: Tensor) -> tuple[Tensor, bool]:
    """(seeds int64 [rows], per_row) exactly as :func:`logitops.sample` keys its noise."""
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    if isinstance(seed, Tensor):
        if seed.dim() != 1 or seed.shape[0] != rows or seed.is_floating_point():
            raise ValueError(
                f"seed must be an int or an int64 tensor of shape [{rows}], got "
                f"{seed.dtype} of shape {tuple(seed.shape)}"
            )
        check_same_device("seed", seed, like)
        return seed.to(torch.int64), True
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise TypeError(f"seed must be an int or an int64 tensor, got {seed!r}")
        full = torch.full(
            (rows,), int(seed) & 0x7FFFFFFFFFFFFFFF, dtype=torch.int64, device=like.device
        )
        return full, False
    device = generator.device if generator is not None else like.device
    key = torch.randint(
        -(2**63), 2**63 - 1, (1,), generator=generator, device=device, dtype=torch.int64
    )
    return key.to(like.device).expand(rows).contiguous(), False


def softmax(logits: Tensor, temperature: float | Tensor | None = None) -> Tensor:
    r"""``softmax(logits / temperature)`` over the last dimension in one kernel (FlashInfer's
    ``flashinfer.sampling.softmax``): each row is read, and its probabilities written, once.

    Computed and returned in float32 (float64 for float64 logits), whatever the logits' dtype,
    as FlashInfer returns float32 probabilities. A row containing NaN or +inf, or of only -inf,
    gives NaN (as ``torch.softmax``).

    Parameters
    ----------
    logits : Tensor
        [V] or [B, V].
    temperature : float or Tensor, optional
        > 0, a number or a per-row tensor [B] (default 1).

    Returns
    -------
    Tensor
        The logits' shape, float32 (float64 for float64 logits).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.softmax(torch.tensor([[0.0, 2.0 * 0.6931472]]), temperature=2.0)
    tensor([[0.3333, 0.6667]])
    >>> x = torch.randn(3, 50, dtype=torch.bfloat16)
    >>> torch.allclose(logitops.softmax(x), torch.softmax(x.float(), -1))
    True
    """
    logits2d, squeeze = _rows("logits", logits)
    temp = _per_row(
        "temperature",
        temperature,
        logits2d.shape[0],
        logits2d,
        integer=False,
        default=1.0,
        low=0.0,
        high=math.inf,
        low_open=True,
    )
    out = _probs_ops.softmax(logits2d, temp)
    return out.squeeze(0) if squeeze else out


def renorm_probs(
    probs: Tensor,
    *,
    top_k: int | Tensor | None = None,
    top_p: float | Tensor | None = None,
    min_p: float | Tensor | None = None,
    order: str = "hf",
) -> Tensor:
    r"""Keeps what top-k, top-p and min-p keep of each row of probabilities and renormalizes
    it: ``p_j / sum(kept p)`` on the kept tokens, 0 elsewhere.

    The filters are :func:`logitops.filter_logits`'s on ``log(probs)``: top-k keeps every token
    tied with the k-th largest, top-p removes the tokens whose ascending cumulative probability
    is <= 1 - p (ties kept together), min-p keeps ``p >= min_p * p_max``; ``order`` as there.
    Rows need not sum to 1 (the filters see ``p / sum(p)``). A row with a negative, NaN or
    infinite probability, or of zeros, comes back as NaN. The probs' dtype, computed in float64.

    Parameters
    ----------
    probs : Tensor
        [V] or [B, V], non-negative.
    top_k, top_p, min_p : int, float or Tensor, optional
        As for :func:`logitops.filter_logits` (numbers or per-row tensors [B]).
    order : {"hf", "vllm", "joint"}
        How the filters combine.

    Returns
    -------
    Tensor
        The probs' shape and dtype.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.renorm_probs(torch.tensor([0.5, 0.3, 0.1, 0.1]), top_p=0.8)
    tensor([0.6250, 0.3750, 0.0000, 0.0000])
    >>> logitops.renorm_probs(torch.tensor([[1.0, 3.0, 3.0, 2.0]]), top_k=1)  # ties kept
    tensor([[0.0000, 0.5000, 0.5000, 0.0000]])
    """
    probs2d, squeeze = _rows("probs", probs)
    k, p, mp = _filters(probs2d, top_k, top_p, min_p)
    out = _probs_ops.probs_renorm(probs2d, k, p, mp, _order(order))
    return out.squeeze(0) if squeeze else out


def top_k_renorm_probs(probs: Tensor, top_k: int | Tensor) -> Tensor:
    """FlashInfer's ``top_k_renorm_probs``: the k largest probabilities of each row (and every
    one tied with the k-th), renormalized. See :func:`renorm_probs`.

    Parameters
    ----------
    probs : Tensor
        [V] or [B, V].
    top_k : int or Tensor
        >= 1, a number or a per-row tensor [B].

    Returns
    -------
    Tensor
        The probs' shape and dtype.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.top_k_renorm_probs(torch.tensor([[0.1, 0.4, 0.2, 0.3]]), 2)
    tensor([[0.0000, 0.5714, 0.0000, 0.4286]])
    """
    return renorm_probs(probs, top_k=top_k)


def top_p_renorm_probs(probs: Tensor, top_p: float | Tensor) -> Tensor:
    """FlashInfer's ``top_p_renorm_probs``: the smallest set of most likely tokens whose mass
    reaches ``top_p`` (transformers' rule; ties at the cut kept), renormalized. See
    :func:`renorm_probs`.

    Parameters
    ----------
    probs : Tensor
        [V] or [B, V].
    top_p : float or Tensor
        In [0, 1], a number or a per-row tensor [B].

    Returns
    -------
    Tensor
        The probs' shape and dtype.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.top_p_renorm_probs(torch.tensor([[0.1, 0.4, 0.2, 0.3]]), 0.6)
    tensor([[0.0000, 0.5714, 0.0000, 0.4286]])
    """
    return renorm_probs(probs, top_p=top_p)


def top_k_mask_logits(logits: Tensor, top_k: int | Tensor) -> Tensor:
    """FlashInfer's ``top_k_mask_logits``: logits outside each row's top-k (ties with the k-th
    kept) become -inf; :func:`logitops.filter_logits` with ``top_k`` only.

    Parameters
    ----------
    logits : Tensor
        [V] or [B, V].
    top_k : int or Tensor
        >= 1, a number or a per-row tensor [B].

    Returns
    -------
    Tensor
        The logits' shape and dtype.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.top_k_mask_logits(torch.tensor([[1.0, 4.0, 2.0, 3.0]]), 2)
    tensor([[-inf, 4., -inf, 3.]])
    """
    return filter_logits(logits, top_k=top_k)


def sample_from_probs(
    probs: Tensor,
    *,
    top_k: int | Tensor | None = None,
    top_p: float | Tensor | None = None,
    min_p: float | Tensor | None = None,
    order: str = "hf",
    seed: int | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Draws one token per row from probabilities after top-k / top-p / min-p, without a sort
    and without a host sync: the kept token maximizing ``log(p) - log(E)``, ``E ~ Exp(1)``
    (exactly a draw from the kept probabilities, renormalized).

    The filters and ``order`` are :func:`renorm_probs`'s; ``seed`` and ``generator`` are
    :func:`logitops.sample`'s (an int, or per-row int64 seeds [B] for batch-invariant draws), and
    the noise is the same, so ``sample_from_probs(softmax(x), seed=s)`` is ``sample(x, seed=s)``
    up to the rounding of ``log(softmax(x))``. Rows need not be normalized. A row with a
    negative, NaN or infinite probability, or of zeros, gives -1.

    Parameters
    ----------
    probs : Tensor
        [V] or [B, V], non-negative.
    top_k, top_p, min_p, order
        As for :func:`renorm_probs`.
    seed : int or Tensor, optional
        An int, or per-row int64 seeds [B].
    generator : torch.Generator, optional
        Draws the key when no seed is given.

    Returns
    -------
    Tensor
        Token ids, int64 [B] (0-dim for 1-D probs).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.sample_from_probs(torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.0, 0.0]]))
    tensor([1, 0])
    >>> p = torch.softmax(torch.randn(4, 100), -1)
    >>> seeds = torch.tensor([1, 2, 3, 4])
    >>> a = logitops.sample_from_probs(p, top_p=0.9, seed=seeds)
    >>> torch.equal(a, logitops.sample_from_probs(p, top_p=0.9, seed=seeds))
    True
    """
    probs2d, squeeze = _rows("probs", probs)
    k, p, mp = _filters(probs2d, top_k, top_p, min_p)
    seeds, per_row = _seeds(seed, generator, probs2d.shape[0], probs2d)
    tokens = _probs_ops.probs_sample(probs2d, k, p, mp, _order(order), seeds, per_row)
    return tokens.squeeze(0) if squeeze else tokens


def sampling_from_probs(
    probs: Tensor, *, seed: int | Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """FlashInfer's ``sampling_from_probs``: one token per row drawn from the probabilities (no
    filter), seeded as :func:`logitops.sample`. See :func:`sample_from_probs`.

    Parameters
    ----------
    probs : Tensor
        [V] or [B, V], non-negative.
    seed, generator
        As for :func:`sample_from_probs`.

    Returns
    -------
    Tensor
        Token ids, int64 [B].

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.sampling_from_probs(torch.tensor([[0.0, 0.0, 1.0]]), seed=0)
    tensor([2])
    """
    return sample_from_probs(probs, seed=seed, generator=generator)


def top_k_sampling_from_probs(
    probs: Tensor,
    top_k: int | Tensor,
    *,
    seed: int | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FlashInfer's ``top_k_sampling_from_probs``: a draw from each row's top-k probabilities
    (ties with the k-th kept), renormalized. See :func:`sample_from_probs`.

    Parameters
    ----------
    probs : Tensor
        [V] or [B, V].
    top_k : int or Tensor
        >= 1, a number or a per-row tensor [B].
    seed, generator
        As for :func:`sample_from_probs`.

    Returns
    -------
    Tensor
        Token ids, int64 [B].

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.top_k_sampling_from_probs(torch.tensor([[0.1, 0.5, 0.4]]), 1, seed=0)
    tensor([1])
    """
    return sample_from_probs(probs, top_k=top_k, seed=seed, generator=generator)


def top_p_sampling_from_probs(
    probs: Tensor,
    top_p: float | Tensor,
    *,
    seed: int | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FlashInfer's ``top_p_sampling_from_probs``: nucleus sampling from probabilities. See
    :func:`sample_from_probs`.

    Parameters
    ----------
    probs : Tensor
        [V] or [B, V].
    top_p : float or Tensor
        In [0, 1], a number or a per-row tensor [B].
    seed, generator
        As for :func:`sample_from_probs`.

    Returns
    -------
    Tensor
        Token ids, int64 [B].

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.top_p_sampling_from_probs(torch.tensor([[0.1, 0.6, 0.3]]), 0.5, seed=0)
    tensor([1])
    """
    return sample_from_probs(probs, top_p=top_p, seed=seed, generator=generator)


def min_p_sampling_from_probs(
    probs: Tensor,
    min_p: float | Tensor,
    *,
    seed: int | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FlashInfer's ``min_p_sampling_from_probs``: a draw among the tokens with
    ``p >= min_p * p_max``. See :func:`sample_from_probs`.

    Parameters
    ----------
    probs : Tensor
        [V] or [B, V].
    min_p : float or Tensor
        In [0, 1], a number or a per-row tensor [B].
    seed, generator
        As for :func:`sample_from_probs`.

    Returns
    -------
    Tensor
        Token ids, int64 [B].

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.min_p_sampling_from_probs(torch.tensor([[0.05, 0.9, 0.05]]), 0.5, seed=0)
    tensor([1])
    """
    return sample_from_probs(probs, min_p=min_p, seed=seed, generator=generator)


def top_k_top_p_sampling_from_probs(
    probs: Tensor,
    top_k: int | Tensor,
    top_p: float | Tensor,
    *,
    filter_apply_order: str = "top_k_first",
    seed: int | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FlashInfer's ``top_k_top_p_sampling_from_probs``. ``filter_apply_order="top_k_first"``
    applies top-p to the top-k survivors renormalized (``order="hf"``), ``"joint"`` measures
    both on the given probabilities (``order="joint"``). See :func:`sample_from_probs`.

    Parameters
    ----------
    probs : Tensor
        [V] or [B, V].
    top_k : int or Tensor
        >= 1, a number or a per-row tensor [B].
    top_p : float or Tensor
        In [0, 1], a number or a per-row tensor [B].
    filter_apply_order : {"top_k_first", "joint"}
        FlashInfer's names.
    seed, generator
        As for :func:`sample_from_probs`.

    Returns
    -------
    Tensor
        Token ids, int64 [B].

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> p = torch.tensor([[0.3, 0.3, 0.2, 0.2]])
    >>> logitops.top_k_top_p_sampling_from_probs(p, 2, 0.5, seed=0) <= 1
    tensor([True])
    """
    if filter_apply_order not in FILTER_APPLY_ORDERS:
        raise ValueError(
            f"filter_apply_order must be one of {tuple(FILTER_APPLY_ORDERS)}, got "
            f"{filter_apply_order!r}"
        )
    return sample_from_probs(
        probs,
        top_k=top_k,
        top_p=top_p,
        order=FILTER_APPLY_ORDERS[filter_apply_order],
        seed=seed,
        generator=generator,
    )
