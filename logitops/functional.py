"""PyTorch-style functions. Signatures match `torch.nn.functional`; extras are keyword-only."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction

from . import _sampling
from .ops import bce_with_logits as _bce_ops
from .ops import cross_entropy as _ce_ops
from .ops._common import (
    accumulation_dtype,
    check_floating,
    check_same_device,
    reduction_code,
    validate_cuda_targets_enabled,
)

__all__ = [
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "filter_logits",
    "min_p_filter",
    "sample",
    "top_k_filter",
    "top_p_filter",
]


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Cross-entropy between logits and targets, fused; a drop-in for
    :func:`torch.nn.functional.cross_entropy`.

    Everything PyTorch accepts behaves as in PyTorch: input (C), (N, C) or (N, C, d1, ..., dK);
    class-index targets (int) or class-probability targets (float, the input's shape);
    ``weight``, ``ignore_index``, ``label_smoothing`` and ``reduction``; NaN for a ``mean`` over
    no (non-ignored) elements.

    Parameters
    ----------
    z_loss : float
        Adds ``z_loss * lse**2`` to the loss of every non-ignored element (PaLM's z-loss,
        flash-attention's ``lse_square_scale``), unweighted by ``weight``; ``mean`` divides it by
        the same normaliser as the rest of the loss.
    softcap : float, optional
        Replaces the logits by ``softcap * tanh(logits / softcap)`` before the softmax; the
        gradient flows through the cap.
    return_lse : bool
        Also return the log-sum-exp of each element's (capped) logits, float32 (float64 for
        float64 input), shaped like the class-index target.

    Returns
    -------
    Tensor, or (Tensor, Tensor) with ``return_lse``.

    Examples
    --------
    >>> logits = torch.randn(8, 32000, requires_grad=True)
    >>> target = torch.randint(0, 32000, (8,))
    >>> loss = logitops.functional.cross_entropy(logits, target, label_smoothing=0.1)
    >>> loss.backward()
    """
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    code = reduction_code(reduction)
    check_floating("input", input)
    if input.dim() == 0:
        raise ValueError("input must have at least 1 dimension (C), (N, C) or (N, C, d1, ...)")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    check_same_device("target", target, input)
    if weight is not None:
        check_floating("weight", weight)
        check_same_device("weight", weight, input)
    _check_options(label_smoothing, z_loss, softcap)

    class_dim = 0 if input.dim() == 1 else 1
    num_classes = input.shape[class_dim]
    if num_classes == 0:
        raise ValueError(f"input must have at least one class, got shape {tuple(input.shape)}")
    if weight is not None and (weight.dim() != 1 or weight.shape[0] != num_classes):
        raise ValueError(
            f"weight must be a 1-D tensor of {num_classes} class weights, got shape "
            f"{tuple(weight.shape)}"
        )
    logits_2d = input.unsqueeze(0) if input.dim() == 1 else input.movedim(1, -1)
    logits_2d = logits_2d.reshape(-1, num_classes)
    cap = 0.0 if softcap is None else float(softcap)

    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(
                f"target of dtype {target.dtype} is read as class probabilities and must have "
                f"the input's shape {tuple(input.shape)}, got {tuple(target.shape)}; "
                "class indices must be an integer tensor"
            )
        probs_2d = target.unsqueeze(0) if input.dim() == 1 else target.movedim(1, -1)
        loss, lse = _cross_entropy_probabilities(
            logits_2d,
            probs_2d.reshape(-1, num_classes),
            weight,
            label_smoothing,
            z_loss,
            cap,
            reduction,
        )
    else:
        if target.dtype == torch.bool or target.is_complex():
            raise TypeError(
                f"target must be int64 class indices or float probabilities, got {target.dtype}"
            )
        index_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
        if target.shape != index_shape:
            raise ValueError(
                f"target of class indices must have shape {tuple(index_shape)} for input of "
                f"shape {tuple(input.shape)}, got {tuple(target.shape)}"
            )
        target_1d = target.reshape(-1).to(torch.int64)
        if input.device.type != "cpu" and validate_cuda_targets_enabled():
            _check_target_range(target_1d, num_classes, ignore_index)
        compute_grad = (
            input.requires_grad and torch.is_grad_enabled() and input.device.type == "cpu"
        )
        loss, lse, _, _ = _ce_ops.cross_entropy_forward(
            logits_2d,
            target_1d,
            weight,
            int(ignore_index),
            float(label_smoothing),
            float(z_loss),
            cap,
            code,
            compute_grad,
        )

    out_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    if code == 0:
        loss = loss.reshape(out_shape)
    if return_lse:
        return loss, lse.reshape(out_shape)
    return loss


def _check_options(label_smoothing: float, z_loss: float, softcap: float | None) -> None:
    if not (0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not (math.isfinite(float(z_loss)) and float(z_loss) >= 0.0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss}")
    if softcap is not None and not (math.isfinite(float(softcap)) and float(softcap) > 0.0):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap}")


def _check_target_range(target: Tensor, num_classes: int, ignore_index: int) -> None:
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):  # one host sync; LOGITOPS_VALIDATE_TARGETS=0 skips it
        position = int(bad.nonzero()[0, 0])
        raise IndexError(
            f"cross_entropy: target[{position}] = {int(target[position])} is out of range; "
            f"expected a class index in [0, {num_classes}) or ignore_index ({ignore_index})"
        )


def _cross_entropy_probabilities(
    logits: Tensor,
    probs: Tensor,
    weight: Tensor | None,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    """Class-probability targets (PyTorch's cross_entropy_loss_prob_target), composed from torch
    ops in the accumulation dtype. `mean` divides by the number of rows, as PyTorch does."""
    acc = accumulation_dtype(logits.dtype)
    z = logits.to(acc)
    if softcap > 0:
        z = softcap * torch.tanh(z / softcap)
    lse = torch.logsumexp(z, dim=-1)
    q = probs.to(acc)
    if label_smoothing > 0:
        q = q * (1 - label_smoothing) + label_smoothing / logits.shape[-1]
    if weight is not None:
        q = q * weight.to(acc)
    # sum_c q_c (lse - z_c), written so that q_c = 0 never multiplies a -inf logit.
    row = q.sum(-1) * lse - torch.where(q != 0, q * z, torch.zeros_like(z)).sum(-1)
    if z_loss > 0:
        row = row + z_loss * lse * lse
    if reduction == "none":
        loss = row
    elif reduction == "sum":
        loss = row.sum()
    else:
        loss = row.sum() / row.shape[0] if row.shape[0] > 0 else row.sum() * float("nan")
    return loss.to(logits.dtype), lse


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    r"""Binary cross-entropy of logits, fused; a drop-in for
    :func:`torch.nn.functional.binary_cross_entropy_with_logits`.

    ``loss = -w * [pos_weight * y * log(sigmoid(z)) + (1 - y) * log(1 - sigmoid(z))]``, computed
    in the stable form ``(1 - y) z + (1 + (pos_weight - 1) y) softplus(-z)``: finite loss and
    gradient for logits of any finite size, with or without ``pos_weight``.

    Parameters
    ----------
    input : Tensor
        Logits of any shape, float32 / float64 / bfloat16 / float16.
    target : Tensor
        Same shape, floating (soft labels allowed).
    weight : Tensor, optional
        Broadcast to the input's shape (read with stride 0, never copied to full size).
    pos_weight : Tensor, optional
        Weight of positive examples, broadcast along the last (class) dimension.
    reduction : {"mean", "sum", "none"}

    Examples
    --------
    >>> logits = torch.randn(4, 8, requires_grad=True)
    >>> labels = torch.randint(0, 2, (4, 8)).float()
    >>> pos_weight = torch.full((8,), 3.0)
    >>> loss = logitops.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
    >>> loss.backward()
    """
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    code = reduction_code(reduction)
    check_floating("input", input)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if not target.is_floating_point():
        raise TypeError(
            f"target must be a floating-point tensor of probabilities, got {target.dtype}"
        )
    if target.shape != input.shape:
        raise ValueError(
            f"target must have the input's shape {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    check_same_device("target", target, input)
    acc = accumulation_dtype(input.dtype)
    cols = input.shape[-1] if input.dim() > 0 else 1
    rows = input.numel() // cols if cols > 0 else 0
    broadcast = {}
    for name, tensor in (("weight", weight), ("pos_weight", pos_weight)):
        if tensor is None:
            broadcast[name] = None
            continue
        check_floating(name, tensor)
        check_same_device(name, tensor, input)
        try:
            shape = torch.broadcast_shapes(tensor.shape, input.shape)
        except RuntimeError:
            shape = None
        if shape != input.shape:
            raise ValueError(
                f"{name} of shape {tuple(tensor.shape)} cannot be broadcast to the input's shape "
                f"{tuple(input.shape)}"
            )
        # A view with stride 0 along broadcast dimensions; reshape copies only for layouts that
        # cannot be expressed as [rows, cols] strides (rare: e.g. a weight varying along a
        # middle dimension only).
        broadcast[name] = tensor.to(acc).expand(input.shape).reshape(rows, cols)
    compute_grad = (
        code != 0 and input.requires_grad and torch.is_grad_enabled() and input.device.type == "cpu"
    )
    loss, _ = _bce_ops.bce_with_logits_forward(
        input.reshape(rows, cols),
        target.reshape(rows, cols).to(input.dtype),
        broadcast["weight"],
        broadcast["pos_weight"],
        code,
        compute_grad,
    )
    return loss.reshape(input.shape) if code == 0 else loss


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
) -> Tensor:
    r"""Temperature, logit bias, top-k, top-p and min-p in one pass over [batch, vocab] logits.

    ``logit_bias`` ([V] or [B, V]) is added first, then the logits are divided by
    ``temperature`` (> 0), then filtered; removed entries become ``filter_value``. Parameters are
    Python numbers or per-row tensors of shape [B]. ``order``:

    - ``"hf"`` (default): temperature -> top-k -> top-p -> min-p, each on the previous result,
      as transformers' warpers (top-p renormalizes over top-k's survivors);
    - ``"vllm"``: temperature -> min-p -> top-k -> top-p (top-p over min-p's and top-k's
      survivors);
    - ``"joint"``: top-k, top-p and min-p all measured on the temperature-scaled distribution
      (SGLang / FlashInfer's joint top-k top-p).

    Top-k keeps every token tied with the k-th largest; top-p keeps tokens while the probability
    mass above them is below p (the crossing token is kept, at exact equality it is not; ties at
    the cut are kept together); min-p keeps ``p >= min_p * p_max``; at least
    ``min_tokens_to_keep`` tokens survive each filter. No sort of the vocabulary. Rows that
    contain NaN come back as NaN.

    Examples
    --------
    >>> logits = torch.randn(4, 32000)
    >>> out = logitops.filter_logits(logits, temperature=0.8, top_k=50, top_p=0.9)
    """
    return _sampling.filter_logits(
        logits,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        logit_bias=logit_bias,
        order=order,
        filter_value=filter_value,
        min_tokens_to_keep=min_tokens_to_keep,
    )


def top_k_filter(
    logits: Tensor,
    k: int | Tensor,
    *,
    filter_value: float = -math.inf,
    min_tokens_to_keep: int = 1,
) -> Tensor:
    """Keeps the k largest logits of each row and every logit tied with the k-th (HF's
    ``TopKLogitsWarper``); ``k >= vocab`` keeps all. See :func:`filter_logits`."""
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
    cumulative probability is <= 1 - p. See :func:`filter_logits`."""
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
    ``MinPLogitsWarper``). See :func:`filter_logits`."""
    return filter_logits(
        logits, min_p=min_p, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
    )


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
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Samples one token id per row from the filtered softmax, without a sort and without a
    host sync: the kept token maximizing ``z - log(E)``, ``E ~ Exp(1)`` (exactly a draw from the
    softmax of the kept logits).

    Rows with temperature 0 are greedy (argmax of the biased logits, first index on ties).
    ``seed``: an int (noise keyed on the seed and the row index) or an int64 tensor [B] of per-row
    seeds (noise keyed on the row's seed only, so a row's token depends on its logits, parameters
    and seed, not on its batch position or the other rows); the same call gives the same tokens.
    Without a seed, one key is drawn from ``generator`` (or torch's default generator). The noise
    is computed in float64 from 53 random bits, so tokens of probability far below 2^-24 stay
    reachable. With ``return_logprobs`` also returns each token's log-probability under the
    filtered, temperature-scaled distribution (0 for greedy rows). A row containing NaN, or with
    every logit -inf, gives token -1 (and log-probability NaN).

    Examples
    --------
    >>> logits = torch.randn(3, 128256)
    >>> tokens = logitops.sample(logits, temperature=0.7, top_p=0.95, seed=torch.tensor([1, 2, 3]))
    """
    return _sampling.sample(
        logits,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        logit_bias=logit_bias,
        order=order,
        seed=seed,
        generator=generator,
        return_logprobs=return_logprobs,
    )
