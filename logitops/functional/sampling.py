"""Logit filtering and sampling: filter_logits, its shorthands top_k_filter, top_p_filter and
min_p_filter, and sample (ops.sampling).

Semantics (see the README): every filter keeps the tokens whose (biased, temperature-scaled)
logit is at least a per-row threshold, so ties at a cut are kept together. Whatever the logits'
dtype, the bias, the temperature and every decision are computed in float32 (float64 for float64
logits), as transformers' generate() and vLLM compute them.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor

from .._validation import check_floating, check_same_device
from ..ops import sampling as _sampling_ops

__all__ = ["filter_logits", "min_p_filter", "sample", "top_k_filter", "top_p_filter"]

ORDERS = _sampling_ops.FILTER_ORDERS


def _as_2d(logits: Tensor) -> tuple[Tensor, bool]:
    check_floating("logits", logits)
    if logits.dim() == 1:
        return logits.unsqueeze(0), True
    if logits.dim() != 2:
        raise ValueError(f"logits must be [vocab] or [batch, vocab], got {tuple(logits.shape)}")
    if logits.shape[1] == 0:
        raise ValueError("logits must have a non-empty vocabulary dimension")
    return logits, False


def _per_row(
    name: str,
    value,
    rows: int,
    like: Tensor,
    *,
    integer: bool,
    default,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> Tensor:
    """A per-row parameter as a [rows] tensor on the logits' device (int64 or float64: a
    Python number reaches the kernels unrounded, as transformers' warpers use it).

    Python numbers are range-checked here; tensors are checked for shape, dtype and device, and
    for range where that needs no host sync (CPU tensors)."""
    dtype = torch.int64 if integer else torch.float64
    if value is None:
        value = default
    if isinstance(value, Tensor):
        if value.dim() != 1 or value.shape[0] != rows:
            raise ValueError(
                f"{name} must be a number or a tensor of shape [{rows}], got shape "
                f"{tuple(value.shape)}"
            )
        if integer and (value.is_floating_point() or value.dtype == torch.bool):
            raise TypeError(f"{name} must hold integers, got {value.dtype}")
        if not integer and not (value.is_floating_point() or value.dtype == torch.bool):
            raise TypeError(f"{name} must hold floating-point numbers, got {value.dtype}")
        check_same_device(name, value, like)
        if value.device.type == "cpu":
            v = value.double()
            bad = ~((v > low) if low_open else (v >= low)) | ~(
                (v < high) if high_open else (v <= high)
            )
            if bool(bad.any()):
                raise ValueError(
                    f"{name} values must be in {'(' if low_open else '['}{low}, "
                    f"{high}{')' if high_open else ']'}, got {value[bad][0].item()}"
                )
        return value.to(dtype)
    if integer:
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise TypeError(
                f"{name} must be an int or an int64 tensor of shape [{rows}], got {value!r}"
            )
    elif isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{name} must be a number or a float tensor of shape [{rows}], got {value!r}"
        )
    ok = (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high
    )
    if not ok or (not integer and math.isnan(value)):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return torch.full((rows,), value, dtype=dtype, device=like.device)


def _bias(logit_bias: Tensor | None, logits: Tensor) -> Tensor | None:
    if logit_bias is None:
        return None
    check_floating("logit_bias", logit_bias)
    check_same_device("logit_bias", logit_bias, logits)
    rows, vocab = logits.shape
    if logit_bias.dim() == 1:
        logit_bias = logit_bias.unsqueeze(0)
    if (
        logit_bias.dim() != 2
        or logit_bias.shape[1] != vocab
        or logit_bias.shape[0] not in (1, rows)
    ):
        raise ValueError(
            f"logit_bias must be [{vocab}] or [{rows}, {vocab}], got {tuple(logit_bias.shape)}"
        )
    # Added in the filters' compute dtype: float32, float64 for float64 logits.
    return logit_bias.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)


def _order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return order


def _min_tokens(min_tokens_to_keep) -> int:
    if (
        isinstance(min_tokens_to_keep, bool)
        or not isinstance(min_tokens_to_keep, Integral)
        or (min_tokens_to_keep < 1)
    ):
        raise ValueError(f"min_tokens_to_keep must be a positive int, got {min_tokens_to_keep!r}")
    return int(min_tokens_to_keep)


def _parameters(logits, temperature, top_k, top_p, min_p, *, greedy_ok):
    rows, vocab = logits.shape
    temp = _per_row(
        "temperature",
        temperature,
        rows,
        logits,
        integer=False,
        default=1.0,
        low=0.0,
        high=math.inf,
        low_open=not greedy_ok,
    )
    k = _per_row("top_k", top_k, rows, logits, integer=True, default=vocab, low=1, high=math.inf)
    p = _per_row("top_p", top_p, rows, logits, integer=False, default=1.0, low=0.0, high=1.0)
    mp = _per_row("min_p", min_p, rows, logits, integer=False, default=0.0, low=0.0, high=1.0)
    return temp, k, p, mp


# Penalties: histories and per-row values (see the README's "Penalties").
REPETITION_SCOPES = ("prompt_and_output", "output")
_FINITE = 1.7976931348623157e308


def _history(name: str, ids, rows: int, like: Tensor, squeeze: bool) -> Tensor | None:
    """A padded [B, L] token-id history (or [L] for 1-D logits) as int64 on the logits' device."""
    if ids is None:
        return None
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be an int64 tensor [{rows}, L], got {type(ids).__name__}")
    if squeeze and ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[0] != rows:
        raise ValueError(f"{name} must be [{rows}, L] token ids, got shape {tuple(ids.shape)}")
    if ids.dtype != torch.int64:
        raise TypeError(f"{name} must be int64 token ids, got {ids.dtype}")
    check_same_device(name, ids, like)
    return ids


def _penalty_tables(
    logits: Tensor,
    prompt_ids: Tensor | None,
    output_ids: Tensor | None,
    output_counts: Tensor | None,
    pad_id: int | None,
) -> tuple[Tensor, Tensor]:
    """The ops' penalty_ids / penalty_counts: each row's distinct history ids and their output
    counts, from torch ops over the [B, L] histories only (a sort, cumsum, scatters; no [B, V]
    work, no host sync). Pads become V, which the kernels skip."""
    rows, vocab = logits.shape
    device = logits.device
    parts, weights, kept = [], [], []
    if prompt_ids is not None:
        parts.append(prompt_ids)
        weights.append(torch.zeros_like(prompt_ids))
        kept.append(torch.ones_like(prompt_ids, dtype=torch.bool))
    if output_ids is not None:
        parts.append(output_ids)
        w = torch.ones_like(output_ids) if output_counts is None else output_counts
        weights.append(w)
        kept.append(w > 0)  # an output entry counted 0 times is not in the history
    if not parts:
        empty = torch.empty((rows, 0), dtype=torch.int64, device=device)
        return empty, empty
    ids = torch.cat(parts, 1)
    w = torch.cat(weights, 1)
    valid = (ids >= 0) & (ids < vocab) & torch.cat(kept, 1)
    if pad_id is not None:
        valid &= ids != pad_id
    ids = torch.where(valid, ids, vocab)
    w = torch.where(valid, w, 0)
    if ids.shape[1] == 0:
        return ids, w
    ids, perm = torch.sort(ids, dim=1, stable=True)
    w = w.gather(1, perm)
    start = torch.ones_like(ids, dtype=torch.bool)
    start[:, 1:] = ids[:, 1:] != ids[:, :-1]
    run = start.long().cumsum(1) - 1  # each entry's rank among the row's distinct ids
    table = torch.full_like(ids, vocab).scatter_(1, run, ids)  # a run's entries agree
    counts = torch.zeros_like(w).scatter_add_(1, run, w)
    return table, counts


def _penalties(
    logits: Tensor,
    squeeze: bool,
    prompt_ids,
    output_ids,
    output_counts,
    pad_id,
    repetition_penalty,
    presence_penalty,
    frequency_penalty,
    repetition_scope,
) -> dict:
    """The ops' penalty arguments (empty when no penalty is set)."""
    rows, vocab = logits.shape
    if repetition_scope not in REPETITION_SCOPES:
        raise ValueError(
            f"repetition_scope must be one of {REPETITION_SCOPES}, got {repetition_scope!r}"
        )
    if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, Integral)):
        raise TypeError(f"pad_id must be an int or None, got {pad_id!r}")
    prompt = _history("prompt_ids", prompt_ids, rows, logits, squeeze)
    output = _history("output_ids", output_ids, rows, logits, squeeze)
    counts = None
    if output_counts is not None:
        if output is None:
            raise ValueError("output_counts needs output_ids (the ids they count)")
        counts = _history("output_counts", output_counts, rows, logits, squeeze)
        if counts.shape != output.shape:
            raise ValueError(
                f"output_counts must have output_ids' shape {tuple(output.shape)}, got "
                f"{tuple(counts.shape)}"
            )
        if counts.device.type == "cpu" and bool((counts < 0).any()):
            raise ValueError("output_counts must be >= 0")
    for name, ids in (("prompt_ids", prompt), ("output_ids", output)):
        # Range checked where that needs no host sync (CPU tensors, as the per-row parameters).
        if ids is not None and ids.device.type == "cpu" and ids.numel() > 0:
            bad = (ids < 0) | (ids >= vocab)
            if pad_id is not None:
                bad &= ids != pad_id
            if bool(bad.any()):
                raise ValueError(
                    f"{name} must hold token ids in [0, {vocab})"
                    + (f" or the pad id {pad_id}" if pad_id is not None else "")
                    + f", got {ids[bad][0].item()}"
                )
    if repetition_penalty is None and presence_penalty is None and frequency_penalty is None:
        return {}
    rep = _per_row(
        "repetition_penalty",
        repetition_penalty,
        rows,
        logits,
        integer=False,
        default=1.0,
        low=0.0,
        high=_FINITE,
        low_open=True,
    )
    pres = _per_row(
        "presence_penalty",
        presence_penalty,
        rows,
        logits,
        integer=False,
        default=0.0,
        low=-_FINITE,
        high=_FINITE,
    )
    freq = _per_row(
        "frequency_penalty",
        frequency_penalty,
        rows,
        logits,
        integer=False,
        default=0.0,
        low=-_FINITE,
        high=_FINITE,
    )
    table, table_counts = _penalty_tables(logits, prompt, output, counts, pad_id)
    return dict(
        penalty_ids=table,
        penalty_counts=table_counts,
        repetition_penalty=rep,
        presence_penalty=pres,
        frequency_penalty=freq,
        repetition_output_only=repetition_scope == "output",
    )


def _warper_parameters(logits, typical_p, epsilon_cutoff, eta_cutoff):
    """The HF-only warpers' per-row tensors, None when off (transformers' GenerationConfig ranges:
    typical_p in (0, 1] with 1 off; epsilon_cutoff and eta_cutoff in [0, 1) with 0 off)."""
    rows = logits.shape[0]
    typical = eps = eta = None
    if typical_p is not None:
        typical = _per_row(
            "typical_p",
            typical_p,
            rows,
            logits,
            integer=False,
            default=1.0,
            low=0.0,
            high=1.0,
            low_open=True,
        )
    if epsilon_cutoff is not None:
        eps = _per_row(
            "epsilon_cutoff",
            epsilon_cutoff,
            rows,
            logits,
            integer=False,
            default=0.0,
            low=0.0,
            high=1.0,
            high_open=True,
        )
    if eta_cutoff is not None:
        eta = _per_row(
            "eta_cutoff",
            eta_cutoff,
            rows,
            logits,
            integer=False,
            default=0.0,
            low=0.0,
            high=1.0,
            high_open=True,
        )
    return typical, eps, eta


def filter_logits(
    logits: Tensor,
    *,
    temperature: float | Tensor | None = None,
    top_k: int | Tensor | None = None,
    top_p: float | Tensor | None = None,
    min_p: float | Tensor | None = None,
    logit_bias: Tensor | None = None,
    order: str = "hf",
    filter_value: float = -math.inf,
    min_tokens_to_keep: int = 1,
    prompt_ids: Tensor | None = None,
    output_ids: Tensor | None = None,
    output_counts: Tensor | None = None,
    pad_id: int | None = None,
    repetition_penalty: float | Tensor | None = None,
    presence_penalty: float | Tensor | None = None,
    frequency_penalty: float | Tensor | None = None,
    repetition_scope: str = "prompt_and_output",
    typical_p: float | Tensor | None = None,
    epsilon_cutoff: float | Tensor | None = None,
    eta_cutoff: float | Tensor | None = None,
) -> Tensor:
    r"""Temperature, logit bias, top-k, top-p and min-p in one pass over [batch, vocab] logits,
    and transformers' typical, epsilon and eta warpers.

    ``logit_bias`` ([V] or [B, V]) is added first, then the penalties (repetition, frequency,
    presence, over token histories) apply, then the logits are divided by ``temperature``
    (> 0), then filtered; removed entries become ``filter_value``. All of it is
    computed in float32 (float64 for float64 logits) and the result rounded once to the logits'
    dtype. Parameters are Python numbers or per-row tensors of shape [B]. ``order``:

    - ``"hf"`` (default): temperature -> top-k -> top-p -> min-p, each on the previous result,
      as transformers' warpers (top-p renormalizes over top-k's survivors);
    - ``"vllm"``: temperature -> min-p -> top-k -> top-p (top-p over min-p's and top-k's
      survivors);
    - ``"joint"``: top-k, top-p and min-p all measured on the temperature-scaled distribution
      (SGLang / FlashInfer's joint top-k top-p).

    Top-k keeps every token tied with the k-th largest; top-p removes the tokens whose ascending
    cumulative probability (their own included) is <= 1 - p, as transformers' warper, with that
    tail summed exactly (in float64) rather than in float32 (ties at the cut are kept together);
    min-p keeps ``p >= min_p * p_max``; at least
    ``min_tokens_to_keep`` tokens survive each filter. No sort of the vocabulary. Rows that
    contain NaN come back as NaN.

    Then, with any order, transformers' HF-only warpers, each on the previous survivors
    (renormalized over them): ``typical_p`` (TypicalLogitsWarper: keeps the tokens whose
    ``|-log p - H|`` is at most that of the first token, by increasing distance, at which the
    cumulative mass reaches ``typical_p``; it may remove the most likely tokens),
    ``epsilon_cutoff`` (keeps ``p >= epsilon_cutoff``) and ``eta_cutoff`` (keeps
    ``p >= min(eta, sqrt(eta) * exp(-H))``), the last two keeping the ``min_tokens_to_keep``
    most likely survivors.

    Parameters
    ----------
    logits : Tensor
        [V] or [B, V], float32 / float64 / bfloat16 / float16.
    temperature : float or Tensor, optional
        > 0 (default 1).
    top_k : int or Tensor, optional
        >= 1 (default: off).
    top_p : float or Tensor, optional
        In [0, 1] (default 1: off).
    min_p : float or Tensor, optional
        In [0, 1] (default 0: off).
    logit_bias : Tensor, optional
        [V] or [B, V], added before the temperature.
    order : {"hf", "vllm", "joint"}
    filter_value : float
        What removed entries become.
    min_tokens_to_keep : int
        At least this many tokens survive each filter.
    prompt_ids, output_ids : Tensor, optional
        Token histories, int64 [B, L] (any L, 0 included; [L] for 1-D logits), padded with
        ``pad_id``. Repetition counts both (``repetition_scope="output"``: output only);
        presence and frequency count the output only.
    output_counts : Tensor, optional
        int64 counts of ``output_ids``' entries (a sparse per-row histogram; default 1 each).
    pad_id : int, optional
        History entries equal to it are ignored.
    repetition_penalty : float or Tensor, optional
        > 0 (1: off): a history token's negative logit is multiplied by it, any other divided,
        once per distinct token (transformers' ``RepetitionPenaltyLogitsProcessor``).
    presence_penalty, frequency_penalty : float or Tensor, optional
        Finite (0: off): ``logit -= frequency * count + presence * (count > 0)`` over the output
        tokens (OpenAI / vLLM).
    repetition_scope : {"prompt_and_output", "output"}
        The repetition penalty's history: transformers' and vLLM's, or SGLang's.
    typical_p : float or Tensor, optional
        In (0, 1] (default 1: off).
    epsilon_cutoff : float or Tensor, optional
        In [0, 1) (default 0: off).
    eta_cutoff : float or Tensor, optional
        In [0, 1) (default 0: off).

    Returns
    -------
    Tensor
        The logits' shape and dtype: biased, temperature-scaled and filtered.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logits = torch.tensor([[1.0, 4.0, 2.0, 3.0]])
    >>> logitops.filter_logits(logits, top_k=2)
    tensor([[-inf, 4., -inf, 3.]])
    >>> logitops.filter_logits(logits, temperature=2.0, top_k=3, filter_value=-100.0)
    tensor([[-100.0000,    2.0000,    1.0000,    1.5000]])
    >>> per_row = logitops.filter_logits(  # one top_k per row
    ...     torch.randn(2, 50), temperature=0.8, top_k=torch.tensor([5, 10]), top_p=0.9
    ... )
    >>> (per_row > -float("inf")).sum(1) <= torch.tensor([5, 10])
    tensor([True, True])
    >>> logitops.filter_logits(  # token 1 was generated twice, token 3 is in the prompt
    ...     torch.tensor([[1.0, 2.0, 0.5, -1.0]]),
    ...     prompt_ids=torch.tensor([[3]]),
    ...     output_ids=torch.tensor([[1, 1]]),
    ...     repetition_penalty=2.0,
    ...     frequency_penalty=0.25,
    ... )
    tensor([[ 1.0000,  0.5000,  0.5000, -2.0000]])
    >>> logitops.filter_logits(torch.tensor([0.5, 0.3, 0.15, 0.05]).log(), epsilon_cutoff=0.1)
    tensor([-0.6931, -1.2040, -1.8971,    -inf])
    """
    logits2d, squeeze = _as_2d(logits)
    temp, k, p, mp = _parameters(logits2d, temperature, top_k, top_p, min_p, greedy_ok=False)
    typical, eps, eta = _warper_parameters(logits2d, typical_p, epsilon_cutoff, eta_cutoff)
    out = _sampling_ops.filter_logits(
        logits2d,
        _bias(logit_bias, logits2d),
        temp,
        k,
        p,
        mp,
        _order(order),
        float(filter_value),
        _min_tokens(min_tokens_to_keep),
        **_penalties(
            logits2d,
            squeeze,
            prompt_ids,
            output_ids,
            output_counts,
            pad_id,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            repetition_scope,
        ),
        typical_p=typical,
        epsilon_cutoff=eps,
        eta_cutoff=eta,
    )
    return out.squeeze(0) if squeeze else out


def sample(
    logits: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    top_k: int | Tensor | None = None,
    top_p: float | Tensor | None = None,
    min_p: float | Tensor | None = None,
    logit_bias: Tensor | None = None,
    order: str = "hf",
    seed: int | Tensor | None = None,
    generator: torch.Generator | None = None,
    return_logprobs: bool = False,
    prompt_ids: Tensor | None = None,
    output_ids: Tensor | None = None,
    output_counts: Tensor | None = None,
    pad_id: int | None = None,
    repetition_penalty: float | Tensor | None = None,
    presence_penalty: float | Tensor | None = None,
    frequency_penalty: float | Tensor | None = None,
    repetition_scope: str = "prompt_and_output",
    typical_p: float | Tensor | None = None,
    epsilon_cutoff: float | Tensor | None = None,
    eta_cutoff: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Samples one token id per row from the filtered softmax, without a sort and without a
    host sync: the kept token maximizing ``z - log(E)``, ``E ~ Exp(1)`` (exactly a draw from the
    softmax of the kept logits).

    Rows with temperature 0 are greedy (argmax of the biased logits, first index on ties; -1 for
    a row of -inf).
    ``seed``: an int (noise keyed on the seed and the row index) or an int64 tensor [B] of per-row
    seeds (noise keyed on the row's seed only, so a row's token depends on its logits, parameters
    and seed, not on its batch position or the other rows); the same call gives the same tokens.
    Without a seed, one key is drawn from ``generator`` (or torch's default generator). The noise
    is computed in float64 from 53 random bits, so tokens of probability far below 2^-24 stay
    reachable. With ``return_logprobs`` also returns each token's log-probability under the
    filtered, temperature-scaled distribution (0 for greedy rows). A row containing NaN, or with
    every logit -inf, gives token -1 (and log-probability NaN).

    Parameters
    ----------
    logits : Tensor
        [V] or [B, V].
    temperature : float or Tensor
        >= 0; 0 is greedy.
    top_k, top_p, min_p, logit_bias, order
        As for :func:`filter_logits`.
    seed : int or Tensor, optional
        An int, or per-row int64 seeds [B].
    generator : torch.Generator, optional
        Draws the key when no seed is given.
    return_logprobs : bool
        Also return each token's log-probability.
    prompt_ids, output_ids, output_counts, pad_id, repetition_penalty, presence_penalty
        As for :func:`filter_logits`.
    frequency_penalty, repetition_scope
        As for :func:`filter_logits`.
    typical_p, epsilon_cutoff, eta_cutoff
        As for :func:`filter_logits` (not applied to greedy rows).

    Returns
    -------
    Tensor, or (Tensor, Tensor) with ``return_logprobs``
        Token ids, int64 [B] (or 0-dim for 1-D logits), and float32 log-probabilities.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 0.0, 1.0]])
    >>> logitops.sample(logits, temperature=0.0)  # greedy
    tensor([1, 0])
    >>> logitops.sample(logits, top_k=1)  # one survivor per row
    tensor([1, 0])
    >>> x = torch.randn(3, 1000)
    >>> seeds = torch.tensor([1, 2, 3])
    >>> tokens = logitops.sample(x, temperature=0.7, top_p=0.95, seed=seeds)
    >>> torch.equal(tokens, logitops.sample(x, temperature=0.7, top_p=0.95, seed=seeds))
    True
    >>> tokens, logprobs = logitops.sample(x, top_k=1, return_logprobs=True)
    >>> logprobs  # the only kept token has probability 1
    tensor([0., 0., 0.])
    """
    logits2d, squeeze = _as_2d(logits)
    rows = logits2d.shape[0]
    temp, k, p, mp = _parameters(logits2d, temperature, top_k, top_p, min_p, greedy_ok=True)
    typical, eps, eta = _warper_parameters(logits2d, typical_p, epsilon_cutoff, eta_cutoff)
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    per_row = isinstance(seed, Tensor)
    if per_row:
        if seed.dim() != 1 or seed.shape[0] != rows or seed.is_floating_point():
            raise ValueError(
                f"seed must be an int or an int64 tensor of shape [{rows}], got "
                f"{seed.dtype} of shape {tuple(seed.shape)}"
            )
        check_same_device("seed", seed, logits2d)
        seeds = seed.to(torch.int64)
    elif seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise TypeError(f"seed must be an int or an int64 tensor, got {seed!r}")
        seeds = torch.full(
            (rows,), int(seed) & 0x7FFFFFFFFFFFFFFF, dtype=torch.int64, device=logits2d.device
        )
    else:
        # One fresh key per call from the generator (or torch's default one), on the logits'
        # device: no host sync.
        device = generator.device if generator is not None else logits2d.device
        key = torch.randint(
            -(2**63), 2**63 - 1, (1,), generator=generator, device=device, dtype=torch.int64
        )
        seeds = key.to(logits2d.device).expand(rows).contiguous()
    penalties = _penalties(
        logits2d,
        squeeze,
        prompt_ids,
        output_ids,
        output_counts,
        pad_id,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
        repetition_scope,
    )
    tokens, logprobs = _sampling_ops.sample(
        logits2d,
        _bias(logit_bias, logits2d),
        temp,
        k,
        p,
        mp,
        _order(order),
        seeds,
        per_row,
        **penalties,
        typical_p=typical,
        epsilon_cutoff=eps,
        eta_cutoff=eta,
    )
    if squeeze:
        tokens, logprobs = tokens.squeeze(0), logprobs.squeeze(0)
    return (tokens, logprobs) if return_logprobs else tokens


def top_k_filter(
    logits: Tensor,
    k: int | Tensor,
    *,
    filter_value: float = -math.inf,
    min_tokens_to_keep: int = 1,
) -> Tensor:
    """Keeps the k largest logits of each row and every logit tied with the k-th (HF's
    ``TopKLogitsWarper``); ``k >= vocab`` keeps all. See :func:`filter_logits`.

    Parameters
    ----------
    logits : Tensor
        [V] or [B, V].
    k : int or Tensor
        >= 1, a number or a per-row tensor [B].
    filter_value, min_tokens_to_keep
        As for :func:`filter_logits`.

    Returns
    -------
    Tensor
        The logits' shape and dtype, removed entries set to ``filter_value``.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.top_k_filter(torch.tensor([1.0, 3.0, 3.0, 2.0]), 1)  # ties with the k-th stay
    tensor([-inf, 3., 3., -inf])
    """
    return filter_logits(
        logits, top_k=k, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
    )


def top_p_filter(
    logits: Tensor,
    p: float | Tensor,
    *,
    filter_value: float = -math.inf,
    min_tokens_to_keep: int = 1,
) -> Tensor:
    """Nucleus filtering (HF's ``TopPLogitsWarper``): removes the tokens whose ascending
    cumulative probability is <= 1 - p. See :func:`filter_logits`.

    Parameters
    ----------
    logits : Tensor
        [V] or [B, V].
    p : float or Tensor
        In [0, 1], a number or a per-row tensor [B].
    filter_value, min_tokens_to_keep
        As for :func:`filter_logits`.

    Returns
    -------
    Tensor
        The logits' shape and dtype, removed entries set to ``filter_value``.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.top_p_filter(torch.tensor([0.1, 0.2, 0.3, 0.4]).log(), 0.5)
    tensor([   -inf,    -inf, -1.2040, -0.9163])
    """
    return filter_logits(
        logits, top_p=p, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
    )


def min_p_filter(
    logits: Tensor,
    min_p: float | Tensor,
    *,
    filter_value: float = -math.inf,
    min_tokens_to_keep: int = 1,
) -> Tensor:
    """Keeps tokens with probability >= min_p times the row's largest (HF's
    ``MinPLogitsWarper``). See :func:`filter_logits`.

    Parameters
    ----------
    logits : Tensor
        [V] or [B, V].
    min_p : float or Tensor
        In [0, 1], a number or a per-row tensor [B].
    filter_value, min_tokens_to_keep
        As for :func:`filter_logits`.

    Returns
    -------
    Tensor
        The logits' shape and dtype, removed entries set to ``filter_value``.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.min_p_filter(torch.tensor([0.1, 0.2, 0.3, 0.4]).log(), 0.4)  # p >= 0.16
    tensor([   -inf, -1.6094, -1.2040, -0.9163])
    """
    return filter_logits(
        logits, min_p=min_p, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
    )
