"""Chain speculative sampling (speculative decoding's verification step): chain_speculative_sampling
from probabilities, FlashInfer's API as the model, and chain_speculative_sampling_from_logits
(softmax of logits / temperature, temperature 0 for vLLM's greedy verification), both over
ops.speculative.

Semantics (see the README): draft token i is accepted when ``u_i * q_i(d_i) < p_i(d_i)`` with
``u_i`` uniform in (0, 1) (``u_i < min(1, p / q)`` without the division); at the first rejection a
token is drawn from ``max(p - q, 0)`` normalized (by an exponential race, which needs no sum), or,
every draft accepted, the bonus token from the last target distribution; positions after it are
-1. The uniforms and the race's noise come from a counter-based generator keyed on the row's
seed, its position and their purpose: with per-row seeds a row's output depends only on its own
inputs and seed.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor

from .._validation import check_floating, check_same_device
from ..ops import speculative as _speculative_ops
from ..ops._common import is_plain_eager_tensor

__all__ = ["chain_speculative_sampling", "chain_speculative_sampling_from_logits"]


def _check_inputs(
    draft: Tensor | None, draft_token_ids: Tensor, target: Tensor, what: str
) -> tuple[Tensor | None, Tensor]:
    """Shapes, dtypes and devices; returns the draft (or None) and int64 draft ids."""
    target_name, draft_name = f"target_{what}", f"draft_{what}"
    check_floating(target_name, target)
    if target.dim() != 3 or target.shape[1] < 1 or target.shape[2] < 1:
        raise ValueError(
            f"{target_name} must be [batch, num_drafts + 1, vocab] with vocab >= 1, got "
            f"{tuple(target.shape)}"
        )
    rows, positions, vocab = target.shape
    if not isinstance(draft_token_ids, Tensor):
        raise TypeError(
            f"draft_token_ids must be an integer tensor, got {type(draft_token_ids).__name__}"
        )
    if (
        draft_token_ids.is_floating_point()
        or draft_token_ids.is_complex()
        or (draft_token_ids.dtype == torch.bool)
    ):
        raise TypeError(f"draft_token_ids must hold integers, got {draft_token_ids.dtype}")
    if tuple(draft_token_ids.shape) != (rows, positions - 1):
        raise ValueError(
            f"draft_token_ids must be [{rows}, {positions - 1}] for {target_name} of shape "
            f"{tuple(target.shape)}, got {tuple(draft_token_ids.shape)}"
        )
    check_same_device("draft_token_ids", draft_token_ids, target)
    if draft is not None:
        check_floating(draft_name, draft)
        check_same_device(draft_name, draft, target)
        if tuple(draft.shape) != (rows, positions - 1, vocab):
            raise ValueError(
                f"{draft_name} must be [{rows}, {positions - 1}, {vocab}] for {target_name} of "
                f"shape {tuple(target.shape)}, got {tuple(draft.shape)}"
            )
        if draft.dtype != target.dtype:
            raise TypeError(
                f"{draft_name} must have the dtype of {target_name} ({target.dtype}), got "
                f"{draft.dtype}"
            )
    ids = draft_token_ids.to(torch.int64)
    # The range check needs the values on the host: CPU tensors only (no sync). On CUDA an
    # out-of-range draft id is rejected by the kernel, so it never appears in the output.
    if ids.device.type == "cpu" and ids.numel() and is_plain_eager_tensor(ids):
        bad = (ids < 0) | (ids >= vocab)
        if bool(bad.any()):
            row, position = (int(v) for v in bad.nonzero()[0])
            raise IndexError(
                f"draft_token_ids[{row}, {position}] = {int(ids[row, position])} is out of "
                f"range; expected a token id in [0, {vocab})"
            )
    return draft, ids


def _seeds(seed, generator, rows: int, device: torch.device) -> tuple[Tensor, bool]:
    """Per-row int64 seeds and whether they are per row (as ``sample``'s ``seed``)."""
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    if isinstance(seed, Tensor):
        if seed.dim() != 1 or seed.shape[0] != rows or seed.is_floating_point():
            raise ValueError(
                f"seed must be an int or an int64 tensor of shape [{rows}], got "
                f"{seed.dtype} of shape {tuple(seed.shape)}"
            )
        if seed.device != device:
            raise ValueError(f"seed is on {seed.device} but the inputs are on {device}")
        return seed.to(torch.int64), True
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise TypeError(f"seed must be an int or an int64 tensor, got {seed!r}")
        return torch.full(
            (rows,), int(seed) & 0x7FFFFFFFFFFFFFFF, dtype=torch.int64, device=device
        ), False
    # One fresh key per call from the generator (or torch's default one): no host sync.
    source = generator.device if generator is not None else device
    key = torch.randint(
        -(2**63), 2**63 - 1, (1,), generator=generator, device=source, dtype=torch.int64
    )
    return key.to(device).expand(rows).contiguous(), False


def _temperature(temperature, rows: int, device: torch.device) -> Tensor:
    if isinstance(temperature, Tensor):
        if temperature.dim() != 1 or temperature.shape[0] != rows:
            raise ValueError(
                f"temperature must be a number or a tensor of shape [{rows}], got shape "
                f"{tuple(temperature.shape)}"
            )
        if not temperature.is_floating_point():
            raise TypeError(
                f"temperature must hold floating-point numbers, got {temperature.dtype}"
            )
        if temperature.device != device:
            raise ValueError(
                f"temperature is on {temperature.device} but the inputs are on {device}"
            )
        if temperature.device.type == "cpu" and is_plain_eager_tensor(temperature):
            bad = ~(temperature >= 0) | ~(temperature < math.inf)
            if bool(bad.any()):
                raise ValueError(
                    f"temperature values must be finite and >= 0, got {temperature[bad][0].item()}"
                )
        return temperature.to(torch.float64)
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise TypeError(
            f"temperature must be a number or a float tensor [{rows}], got {temperature!r}"
        )
    if not (0 <= temperature < math.inf):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    return torch.full((rows,), float(temperature), dtype=torch.float64, device=device)


def chain_speculative_sampling(
    draft_probs: Tensor | None,
    draft_token_ids: Tensor,
    target_probs: Tensor,
    *,
    seed: int | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Verifies a chain of draft tokens against the target model's probabilities (speculative
    sampling, Leviathan et al. 2023 / Chen et al. 2023), FlashInfer's
    ``chain_speculative_sampling`` as the model.

    For each row and position i, draft token ``d_i`` is accepted when
    ``u_i * draft_probs[i, d_i] < target_probs[i, d_i]`` (``u_i`` uniform in (0, 1), that is
    ``u_i < min(1, p / q)``); at the first rejection ``pos`` a token is drawn from
    ``max(target_probs[pos] - draft_probs[pos], 0)`` normalized, or from ``target_probs[pos]`` when
    that is all zero; if every draft is accepted, the bonus token is drawn from
    ``target_probs[S]``. The emitted tokens then follow the target distributions exactly.
    ``draft_probs=None`` means each draft was a point mass on its token (n-gram drafts, vLLM's
    ``draft_probs=None``): ``d_i`` is accepted with probability ``target_probs[i, d_i]``.

    The probabilities are used as given (not renormalized or checked: that would need a sync
    on CUDA), in double. A row that meets a NaN among the values it reads (the 2S probabilities
    of its drafts and the distribution it resamples from) gives -1 everywhere and counts 0. Draft
    ids are checked on CPU tensors (IndexError); on CUDA an out-of-range draft id is rejected
    without being read, so it never appears in the output. No host sync.

    Parameters
    ----------
    draft_probs : Tensor or None
        [B, S, V], the draft model's probabilities, the target's dtype.
    draft_token_ids : Tensor
        [B, S] integer token ids.
    target_probs : Tensor
        [B, S + 1, V], float32 / float64 / bfloat16 / float16.
    seed : int or Tensor, optional
        An int (noise keyed on the seed and the row index) or per-row int64 seeds [B] (keyed on
        the row's seed only: batch invariant). Without it one key is drawn from ``generator``.
    generator : torch.Generator, optional
        Draws the key when no seed is given.

    Returns
    -------
    (Tensor, Tensor, Tensor)
        ``output_token_ids`` int64 [B, S + 1]: the accepted drafts, the resampled (or bonus)
        token, then -1; ``accepted`` int64 [B]: the positions whose test passes, each on its own
        (FlashInfer's ``output_accepted_token_num``); ``emitted`` int64 [B]: the drafts accepted
        before the first rejection (``output_emitted_draft_token_num``).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> target = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # [B=1, S+1=2, V=3]
    >>> draft = torch.tensor([[[0.0, 1.0, 0.0]]])
    >>> logitops.chain_speculative_sampling(draft, torch.tensor([[1]]), target, seed=0)
    (tensor([[1, 2]]), tensor([1]), tensor([1]))
    >>> tokens, accepted, emitted = logitops.chain_speculative_sampling(  # a rejected draft
    ...     draft, torch.tensor([[0]]), target, seed=0
    ... )
    >>> tokens, emitted
    (tensor([[ 1, -1]]), tensor([0]))
    """
    draft, ids = _check_inputs(draft_probs, draft_token_ids, target_probs, "probs")
    seeds, per_row = _seeds(seed, generator, target_probs.shape[0], target_probs.device)
    temperature = torch.ones(target_probs.shape[0], dtype=torch.float64, device=target_probs.device)
    return _speculative_ops.speculative_sample(
        target_probs, draft, ids, temperature, False, seeds, per_row
    )


def chain_speculative_sampling_from_logits(
    draft_logits: Tensor | None,
    draft_token_ids: Tensor,
    target_logits: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    seed: int | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r""":func:`chain_speculative_sampling` of ``softmax(target_logits / temperature)`` and
    ``softmax(draft_logits / temperature)``, fused: no probability tensor is materialized.

    The scaled logits are computed in float32 (float64 for float64 logits), as
    :func:`logitops.sample` computes them, the softmax and every decision in double. Rows with
    temperature 0 are verified greedily, as vLLM's rejection sampler does: a draft is accepted
    while it equals the target's argmax (first index on ties), the output holds the target's
    argmax at the first mismatch (or the bonus position), and ``draft_logits`` is not read. A row
    whose logits contain NaN, +inf, or a position of all -inf gives -1 everywhere and counts 0
    (greedy rows: NaN or a target position of all -inf). Unlike with probabilities, every
    position's log-sum-exp is needed, so the whole input is read once.

    Parameters
    ----------
    draft_logits : Tensor or None
        [B, S, V], the target's dtype; None: point-mass drafts.
    draft_token_ids : Tensor
        [B, S] integer token ids.
    target_logits : Tensor
        [B, S + 1, V].
    temperature : float or Tensor
        >= 0, a number or per-row [B]; 0 is greedy. Divides both logits.
    seed, generator
        As for :func:`chain_speculative_sampling`.

    Returns
    -------
    (Tensor, Tensor, Tensor)
        As :func:`chain_speculative_sampling`.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> target = torch.tensor([[[0.0, 5.0, 1.0], [3.0, 0.0, 1.0]]])
    >>> draft = torch.tensor([[[0.0, 5.0, 1.0]]])
    >>> logitops.chain_speculative_sampling_from_logits(  # greedy: draft 2 is not the argmax
    ...     draft, torch.tensor([[2]]), target, temperature=0.0
    ... )
    (tensor([[ 1, -1]]), tensor([0]), tensor([0]))
    >>> tokens, accepted, emitted = logitops.chain_speculative_sampling_from_logits(
    ...     draft, torch.tensor([[1]]), target, temperature=0.0
    ... )
    >>> tokens  # draft 1 accepted, then the bonus token: the argmax of the last position
    tensor([[1, 0]])
    """
    draft, ids = _check_inputs(draft_logits, draft_token_ids, target_logits, "logits")
    rows = target_logits.shape[0]
    temp = _temperature(temperature, rows, target_logits.device)
    seeds, per_row = _seeds(seed, generator, rows, target_logits.device)
    return _speculative_ops.speculative_sample(
        target_logits, draft, ids, temp, True, seeds, per_row
    )
