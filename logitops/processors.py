"""Logits processors with the constructors and ``__call__(input_ids, scores)`` of transformers'
warpers, backed by logitops' fused filter; usable in a transformers ``LogitsProcessorList``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import functional as lf

__all__ = [
    "EpsilonLogitsWarper",
    "EtaLogitsWarper",
    "LogitsFilter",
    "MinPLogitsWarper",
    "PresenceFrequencyPenaltyLogitsProcessor",
    "RepetitionPenaltyLogitsProcessor",
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "TypicalLogitsWarper",
]


# The parameters that may be per-row tensors [B] (one value per row of the scores).
_PER_ROW = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
)


class LogitsFilter:
    """Temperature, top-k, top-p, min-p, typical, epsilon and eta in one fused pass (see
    :func:`logitops.filter_logits`). Each parameter is a number or, as in ``filter_logits``, a
    per-row tensor [B] (on the scores' device) with one value per row of the scores it is called
    on, so per-row parameters reach transformers' ``generate()``.

    Parameters
    ----------
    temperature, top_k, top_p, min_p, order, filter_value, min_tokens_to_keep, logit_bias
        As for :func:`logitops.filter_logits`; checked here, as transformers' warpers check
        theirs in their constructors.
    typical_p, epsilon_cutoff, eta_cutoff
        As for :func:`logitops.filter_logits` (transformers' GenerationConfig names).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> processor = logitops.processors.LogitsFilter(temperature=0.5, top_k=2)
    >>> processor(None, torch.tensor([[1.0, 4.0, 2.0, 3.0]]))  # input_ids are not used
    tensor([[-inf, 8., -inf, 6.]])

    In ``generate()``: ``LogitsProcessorList([LogitsFilter(temperature=0.7, top_p=0.9)])``
    (transformers' list), or as ``logits_processor=`` of ``model.generate``.
    """

    def __init__(
        self,
        temperature: float | Tensor | None = None,
        top_k: int | Tensor | None = None,
        top_p: float | Tensor | None = None,
        min_p: float | Tensor | None = None,
        *,
        order: str = "hf",
        filter_value: float = -math.inf,
        min_tokens_to_keep: int = 1,
        logit_bias: Tensor | None = None,
        typical_p: float | Tensor | None = None,
        epsilon_cutoff: float | Tensor | None = None,
        eta_cutoff: float | Tensor | None = None,
    ) -> None:
        self.kwargs = dict(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            order=order,
            filter_value=filter_value,
            min_tokens_to_keep=min_tokens_to_keep,
            logit_bias=logit_bias,
            typical_p=typical_p,
            epsilon_cutoff=epsilon_cutoff,
            eta_cutoff=eta_cutoff,
        )
        # Validate now, as transformers' warpers do in their constructors: on a dummy batch with
        # as many rows as the per-row tensors (or logit_bias) have, on their device.
        tensors = [self.kwargs[name] for name in _PER_ROW if isinstance(self.kwargs[name], Tensor)]
        lengths = {t.shape[0] for t in tensors if t.dim() == 1}
        if len(lengths) > 1:
            raise ValueError(
                "per-row temperature / top_k / top_p / min_p / typical_p / epsilon_cutoff / "
                "eta_cutoff tensors must all have one length "
                f"(the batch size), got {sorted(lengths)}"
            )
        bias = logit_bias if isinstance(logit_bias, Tensor) else None
        rows, vocab, device = 1, 1, torch.device("cpu")
        if bias is not None:
            vocab = bias.shape[-1] if bias.dim() > 0 else 1
            rows = bias.shape[0] if bias.dim() == 2 else 1
            device = bias.device
        if lengths:
            rows = lengths.pop()
            device = tensors[0].device
        lf.filter_logits(torch.zeros(rows, vocab, device=device), **self.kwargs)

    def __call__(self, input_ids: Tensor | None, scores: Tensor) -> Tensor:
        return lf.filter_logits(scores, **self.kwargs)


class TemperatureLogitsWarper(LogitsFilter):
    """``scores / temperature`` (temperature > 0), as transformers' warper.

    Parameters
    ----------
    temperature : float
        > 0.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> warper = logitops.processors.TemperatureLogitsWarper(2.0)
    >>> warper(None, torch.tensor([[2.0, 4.0]]))
    tensor([[1., 2.]])
    """

    def __init__(self, temperature: float) -> None:
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature has to be a strictly positive float, got {temperature}")
        super().__init__(temperature=float(temperature))
        self.temperature = temperature


class TopKLogitsWarper(LogitsFilter):
    """Keeps the top_k largest scores and their ties, as transformers' warper.

    Parameters
    ----------
    top_k : int
        >= 1 (at least ``min_tokens_to_keep`` are kept).
    filter_value : float
        What removed scores become.
    min_tokens_to_keep : int
        At least this many tokens survive.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> warper = logitops.processors.TopKLogitsWarper(top_k=2)
    >>> warper(None, torch.tensor([[1.0, 4.0, 2.0, 3.0]]))
    tensor([[-inf, 4., -inf, 3.]])
    """

    def __init__(
        self, top_k: int, filter_value: float = -math.inf, min_tokens_to_keep: int = 1
    ) -> None:
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k has to be a strictly positive integer, got {top_k}")
        super().__init__(
            top_k=top_k, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
        )
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value


class TopPLogitsWarper(LogitsFilter):
    """Nucleus filtering, as transformers' warper: removes the tokens whose ascending cumulative
    probability is <= 1 - top_p.

    Parameters
    ----------
    top_p : float
        In [0, 1].
    filter_value, min_tokens_to_keep
        As for :class:`TopKLogitsWarper`.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> warper = logitops.processors.TopPLogitsWarper(top_p=0.5)
    >>> warper(None, torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log())
    tensor([[   -inf,    -inf, -1.2040, -0.9163]])
    """

    def __init__(
        self, top_p: float, filter_value: float = -math.inf, min_tokens_to_keep: int = 1
    ) -> None:
        top_p = float(top_p)
        if top_p < 0 or top_p > 1.0:
            raise ValueError(f"top_p has to be a float > 0 and < 1, got {top_p}")
        super().__init__(
            top_p=top_p, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
        )
        self.top_p = top_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep


class MinPLogitsWarper(LogitsFilter):
    """Keeps tokens with probability >= min_p * max probability, as transformers' warper.

    Parameters
    ----------
    min_p : float
        In [0, 1].
    filter_value, min_tokens_to_keep
        As for :class:`TopKLogitsWarper`.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> warper = logitops.processors.MinPLogitsWarper(min_p=0.4)  # keeps p >= 0.4 * 0.4
    >>> warper(None, torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log())
    tensor([[   -inf, -1.6094, -1.2040, -0.9163]])
    """

    def __init__(
        self, min_p: float, filter_value: float = -math.inf, min_tokens_to_keep: int = 1
    ) -> None:
        if not (0 <= min_p <= 1.0):
            raise ValueError(f"min_p has to be a float in [0, 1], got {min_p}")
        super().__init__(
            min_p=float(min_p), filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
        )
        self.min_p = min_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep


def _check_min_tokens(min_tokens_to_keep) -> int:
    if isinstance(min_tokens_to_keep, bool) or int(min_tokens_to_keep) < 1:
        raise ValueError(
            f"min_tokens_to_keep has to be a strictly positive integer, got {min_tokens_to_keep}"
        )
    return int(min_tokens_to_keep)


class TypicalLogitsWarper(LogitsFilter):
    """Typical decoding, as transformers' warper: keeps the tokens whose ``|-log p - H|`` (H the
    entropy) is at most that of the first token, in increasing order of it, at which the
    cumulative probability reaches ``mass``, and the ``min_tokens_to_keep`` most typical ones.
    It may remove the most likely tokens. No sort: a radix search on that distance.

    Parameters
    ----------
    mass : float
        In (0, 1).
    filter_value, min_tokens_to_keep
        As for :class:`TopKLogitsWarper`.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> warper = logitops.processors.TypicalLogitsWarper(mass=0.5)
    >>> warper(None, torch.tensor([[0.4, 0.2, 0.2, 0.2]]).log())  # the top token is atypical
    tensor([[   -inf, -1.6094, -1.6094, -1.6094]])
    """

    def __init__(
        self, mass: float = 0.9, filter_value: float = -math.inf, min_tokens_to_keep: int = 1
    ) -> None:
        mass = float(mass)
        if not (0 < mass < 1):
            raise ValueError(f"typical_p has to be a float > 0 and < 1, got {mass}")
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError(
                f"min_tokens_to_keep has to be a positive integer, got {min_tokens_to_keep}"
            )
        super().__init__(
            typical_p=mass, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
        )
        self.mass = mass
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep


class EpsilonLogitsWarper(LogitsFilter):
    """Epsilon sampling, as transformers' warper: keeps ``p >= epsilon`` and the
    ``min_tokens_to_keep`` most likely tokens (with their ties).

    Parameters
    ----------
    epsilon : float
        In (0, 1).
    filter_value, min_tokens_to_keep
        As for :class:`TopKLogitsWarper`.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> warper = logitops.processors.EpsilonLogitsWarper(epsilon=0.1)
    >>> warper(None, torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log())
    tensor([[-0.6931, -1.2040, -1.8971,    -inf]])
    """

    def __init__(
        self, epsilon: float, filter_value: float = -math.inf, min_tokens_to_keep: int = 1
    ) -> None:
        epsilon = float(epsilon)
        if epsilon <= 0 or epsilon >= 1:
            raise ValueError(f"epsilon_cutoff has to be a float > 0 and < 1, got {epsilon}")
        min_tokens_to_keep = _check_min_tokens(min_tokens_to_keep)
        super().__init__(
            epsilon_cutoff=epsilon, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
        )
        self.epsilon = epsilon
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep


class EtaLogitsWarper(LogitsFilter):
    """Eta sampling, as transformers' warper: keeps ``p >= min(epsilon, sqrt(epsilon) *
    exp(-H))`` (H the entropy; epsilon rounded to float32, as transformers' tensor of it) and the
    ``min_tokens_to_keep`` most likely tokens (with their ties).

    Parameters
    ----------
    epsilon : float
        In (0, 1).
    filter_value, min_tokens_to_keep
        As for :class:`TopKLogitsWarper`.
    device : str
        Accepted for transformers' signature; the cutoff goes with the scores.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> warper = logitops.processors.EtaLogitsWarper(epsilon=0.1)
    >>> warper(None, torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log())
    tensor([[-0.6931, -1.2040, -1.8971,    -inf]])
    """

    def __init__(
        self,
        epsilon: float,
        filter_value: float = -math.inf,
        min_tokens_to_keep: int = 1,
        device: str = "cpu",
    ) -> None:
        epsilon = float(epsilon)
        if epsilon <= 0 or epsilon >= 1:
            raise ValueError(f"eta_cutoff has to be a float > 0 and < 1, got {epsilon}")
        min_tokens_to_keep = _check_min_tokens(min_tokens_to_keep)
        super().__init__(
            eta_cutoff=epsilon, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
        )
        self.epsilon = torch.tensor(epsilon, device=device)
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep


def _history_ids(input_ids: Tensor, vocab: int, skip: int | Tensor | None) -> Tensor:
    """input_ids [B, L] (or [L]) as a history for the fused op: ids outside the scores'
    vocabulary and the first `skip` positions (an int or per-row [B]) become the pad id -1, as
    transformers drops them."""
    ids = input_ids if input_ids.dim() == 2 else input_ids.unsqueeze(0)
    ids = ids.long()
    if isinstance(skip, int):
        ids = ids[:, skip:]
    elif isinstance(skip, Tensor):
        if skip.shape[0] != ids.shape[0]:
            raise ValueError("Incompatible `prompt_ignore_length` batch size")
        positions = torch.arange(ids.shape[1], device=ids.device)
        ids = ids.masked_fill(positions[None, :] < skip.to(ids.device)[:, None], -1)
    return ids.masked_fill((ids >= vocab) | (ids < 0), -1)


class RepetitionPenaltyLogitsProcessor:
    """transformers' ``RepetitionPenaltyLogitsProcessor`` on logitops' fused filter: over the
    distinct tokens of ``input_ids`` (the prompt included), a negative score is multiplied by
    ``penalty`` and any other divided by it. The same output as transformers' for float32 and
    float64 scores; for bfloat16 / float16 scores logitops computes in float32 and rounds once,
    where torch divides by a Python number as a multiplication by its float32 reciprocal, which can
    differ by one ulp of the scores' dtype near a rounding boundary.

    Parameters
    ----------
    penalty : float
        > 0; 1 is no penalty.
    prompt_ignore_length : int or Tensor, optional
        Leading positions of ``input_ids`` not counted (an int, or per-row int64 [B]).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> processor = logitops.processors.RepetitionPenaltyLogitsProcessor(2.0)
    >>> processor(torch.tensor([[0, 2, 2]]), torch.tensor([[1.0, 3.0, -1.0]]))
    tensor([[ 0.5000,  3.0000, -2.0000]])
    """

    def __init__(self, penalty: float, prompt_ignore_length: int | Tensor | None = None) -> None:
        if not isinstance(penalty, float) or not (penalty > 0):
            raise ValueError(f"`penalty` has to be a strictly positive float, but is {penalty}")
        if isinstance(prompt_ignore_length, int) and prompt_ignore_length < 0:
            raise ValueError(
                "`prompt_ignore_length` has to be a positive integer, but is "
                f"{prompt_ignore_length}"
            )
        if isinstance(prompt_ignore_length, Tensor) and prompt_ignore_length.dim() != 1:
            raise ValueError("`prompt_ignore_length` must be 1D")
        self.penalty = penalty
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        ids = _history_ids(input_ids, scores.shape[-1], self.prompt_ignore_length)
        return lf.filter_logits(scores, prompt_ids=ids, pad_id=-1, repetition_penalty=self.penalty)


class PresenceFrequencyPenaltyLogitsProcessor:
    """OpenAI's (and vLLM's) presence and frequency penalties as a transformers logits processor
    (transformers has none): ``score -= frequency_penalty * count + presence_penalty * (count > 0)``
    with ``count`` a token's occurrences among the generated tokens, ``input_ids`` after the first
    ``prompt_length`` positions.

    Parameters
    ----------
    presence_penalty, frequency_penalty : float or Tensor
        Finite; a number or per-row [B] (0: off).
    prompt_length : int or Tensor
        The prompt's length (an int, or per-row int64 [B] for left-aligned prompts of several
        lengths): what ``generate()`` passes as ``input_ids`` is the prompt and the output.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> processor = logitops.processors.PresenceFrequencyPenaltyLogitsProcessor(
    ...     presence_penalty=0.5, frequency_penalty=0.25, prompt_length=1
    ... )
    >>> processor(torch.tensor([[1, 0, 0, 2]]), torch.tensor([[1.0, 1.0, 1.0]]))
    tensor([[0.0000, 1.0000, 0.2500]])
    """

    def __init__(
        self,
        presence_penalty: float | Tensor = 0.0,
        frequency_penalty: float | Tensor = 0.0,
        prompt_length: int | Tensor = 0,
    ) -> None:
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, (int, Tensor)):
            raise TypeError(
                f"prompt_length must be an int or an int64 tensor, got {prompt_length!r}"
            )
        if isinstance(prompt_length, int) and prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {prompt_length}")
        if isinstance(prompt_length, Tensor) and prompt_length.dim() != 1:
            raise ValueError("prompt_length must be an int or a 1-D tensor [B]")
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.prompt_length = prompt_length
        # Checked now, as transformers' processors check theirs in their constructors.
        rows = 1
        for value in (presence_penalty, frequency_penalty):
            if isinstance(value, Tensor) and value.dim() == 1:
                rows = value.shape[0]
        lf.filter_logits(
            torch.zeros(rows, 1),
            presence_penalty=presence_penalty
            if not isinstance(presence_penalty, Tensor)
            else presence_penalty.cpu(),
            frequency_penalty=frequency_penalty
            if not isinstance(frequency_penalty, Tensor)
            else frequency_penalty.cpu(),
        )

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        ids = _history_ids(input_ids, scores.shape[-1], self.prompt_length)
        return lf.filter_logits(
            scores,
            output_ids=ids,
            pad_id=-1,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )
