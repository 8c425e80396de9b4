"""PyTorch-style functions. Signatures match `torch.nn.functional`; extras are keyword-only."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction

from ._linear_cross_entropy import linear_cross_entropy
from ._sampling import filter_logits, sample
from .ops import _composite
from .ops import bce_with_logits as _bce_ops
from .ops import cross_entropy as _ce_ops
from .ops import distillation as _distill_ops
from .ops._common import (
    accumulation_dtype,
    check_floating,
    check_same_device,
    is_plain_eager_tensor,
    reduction_code,
    runs_cpu_kernels,
    validate_cuda_targets_enabled,
)

__all__ = [
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "distillation_loss",
    "filter_logits",
    "kl_div_with_logits",
    "linear_cross_entropy",
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
        if ignore_index != -100:
            # PyTorch's rule (and message): probabilities have no class to ignore.
            raise ValueError(
                "ignore_index is not supported for floating point target (class-probability "
                f"targets), got ignore_index={ignore_index}"
            )
        probs_2d = target.unsqueeze(0) if input.dim() == 1 else target.movedim(1, -1)
        probs_2d = probs_2d.reshape(-1, num_classes).to(input.dtype)
        options = (weight, float(label_smoothing), float(z_loss), cap, code)
        if _composite.transforms_active(input, target, weight):
            loss, lse = _composite.cross_entropy_probs(logits_2d, probs_2d, *options)
        else:
            loss, lse, _ = _ce_ops.cross_entropy_probs_forward(
                logits_2d, probs_2d, *options, _fuse_gradient(input)
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
        if not runs_cpu_kernels(input) and validate_cuda_targets_enabled():
            _check_target_range(target_1d, num_classes, ignore_index)
        options = (weight, int(ignore_index), float(label_smoothing), float(z_loss), cap, code)
        if _composite.transforms_active(input, weight):
            loss, lse = _composite.cross_entropy(logits_2d, target_1d, *options)
        else:
            loss, lse, _, _ = _ce_ops.cross_entropy_forward(
                logits_2d, target_1d, *options, _fuse_gradient(input)
            )

    out_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    if code == 0:
        loss = loss.reshape(out_shape)
    if return_lse:
        return loss, lse.reshape(out_shape)
    return loss


def _is_finite(value: float) -> bool:
    # Comparisons rather than math.isfinite: dynamo traces them when torch.compile(dynamic=True)
    # turns Python floats into symbolic ones.
    return value == value and value != math.inf and value != -math.inf


def _check_options(label_smoothing: float, z_loss: float, softcap: float | None) -> None:
    if not (0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not (_is_finite(z_loss) and float(z_loss) >= 0.0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss}")
    if softcap is not None and not (_is_finite(softcap) and float(softcap) > 0.0):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap}")


def _check_target_range(
    target: Tensor,
    num_classes: int,
    ignore_index: int,
    *,
    prefix: str = "cross_entropy: ",
    expected: str = "a class index",
) -> None:
    if not is_plain_eager_tensor(target):
        return  # traced (torch.compile): no host sync; the kernels write NaN for a bad target
    if target.is_cuda and torch.cuda.is_current_stream_capturing():
        return  # a sync would break the CUDA graph capture; the kernels write NaN instead
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):  # one host sync; LOGITOPS_VALIDATE_TARGETS=0 skips it
        position = int(bad.nonzero()[0, 0])
        raise IndexError(
            f"{prefix}target[{position}] = {int(target[position])} is out of range; "
            f"expected {expected} in [0, {num_classes}) or ignore_index ({ignore_index})"
        )


def _fuse_gradient(input: Tensor) -> bool:
    """Whether the forward should also write the gradient (read the logits once): when one will
    be needed, on the CPU. On CUDA the backward recomputes it from the saved lse instead, because
    skipping the multiplication by the upstream gradient there would need a host sync."""
    return input.requires_grad and torch.is_grad_enabled() and runs_cpu_kernels(input)


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
    operands = (
        input.reshape(rows, cols),
        target.reshape(rows, cols).to(input.dtype),
        broadcast["weight"],
        broadcast["pos_weight"],
        code,
    )
    if _composite.transforms_active(input, target, weight, pos_weight):
        loss = _composite.bce_with_logits(*operands)
    else:
        # reduction "none" recomputes in the backward: its upstream gradient is a full tensor.
        loss, _ = _bce_ops.bce_with_logits_forward(*operands, code != 0 and _fuse_gradient(input))
    return loss.reshape(input.shape) if code == 0 else loss


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


def kl_div_with_logits(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    kind: str = "forward",
    beta: float = 0.5,
    ignore_index: int = -100,
    target: Tensor | None = None,
    reduction: str = "batchmean",
) -> Tensor:
    r"""Divergence between the teacher's and the student's softmax at temperature T, fused: one
    kernel reads both logit rows and writes the student's gradient; the teacher gets none.

    With P = softmax(teacher / T) and Q = softmax(student / T), per row:

    - ``kind="forward"``: KL(P || Q) = sum P (log P - log Q) (what ``F.kl_div(log Q, P)`` gives);
    - ``kind="reverse"``: KL(Q || P);
    - ``kind="jsd"``: beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q, with
      log M computed in log space; beta = 0 and beta = 1 are exactly the forward and reverse KL.

    Rows (all leading dimensions flattened) whose ``target`` equals ``ignore_index`` add nothing
    and are not counted. ``reduction``: ``"batchmean"`` (the sum divided by the number of
    counted rows: ``KLDivLoss``'s batchmean for 2-D input; torch divides by ``input.size(0)``,
    i.e. by V for 1-D and by B for [B, T, V] input), ``"sum"`` or ``"none"`` (per row). No T^2
    factor here: see :func:`distillation_loss`.

    Examples
    --------
    >>> student = torch.randn(8, 1000, requires_grad=True)
    >>> teacher = torch.randn(8, 1000)
    >>> logitops.functional.kl_div_with_logits(student, teacher, temperature=2.0).backward()
    """
    check_floating("student_logits", student_logits)
    check_floating("teacher_logits", teacher_logits)
    check_same_device("teacher_logits", teacher_logits, student_logits)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits must have the student's shape {tuple(student_logits.shape)}, got "
            f"{tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() == 0 or student_logits.shape[-1] == 0:
        raise ValueError("student_logits must be [..., vocab] with a non-empty vocabulary")
    if not (_is_finite(temperature) and float(temperature) > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if kind not in _distill_ops.KIND_CODES:
        raise ValueError(f"kind must be 'forward', 'reverse' or 'jsd', got {kind!r}")
    if not (0.0 <= float(beta) <= 1.0):
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if reduction not in _distill_ops.DISTILL_REDUCTIONS:
        raise ValueError(f"reduction must be 'batchmean', 'sum' or 'none', got {reduction!r}")
    if kind == "jsd" and float(beta) in (0.0, 1.0):
        kind = "forward" if float(beta) == 0.0 else "reverse"
    vocab = student_logits.shape[-1]
    lead = student_logits.shape[:-1]
    target_1d = None
    if target is not None:
        if not isinstance(target, torch.Tensor) or target.is_floating_point():
            raise TypeError("target must be an integer tensor of class indices (or None)")
        if target.shape != lead:
            raise ValueError(f"target must have shape {tuple(lead)}, got {tuple(target.shape)}")
        check_same_device("target", target, student_logits)
        target_1d = target.reshape(-1).to(torch.int64)
    student_2d = student_logits.reshape(-1, vocab)
    code = _distill_ops.DISTILL_REDUCTIONS[reduction]
    operands = (
        student_2d,
        teacher_logits.detach().reshape(-1, vocab).to(student_logits.dtype),
        target_1d,
        int(ignore_index),
        float(temperature),
        _distill_ops.KIND_CODES[kind],
        float(beta),
        code,
    )
    if _composite.transforms_active(student_logits):
        loss = _composite.kl_div_logits(*operands)
    else:
        loss, _, _ = _distill_ops.kl_div_logits_forward(*operands, _fuse_gradient(student_logits))
    return loss.reshape(lead) if code == 0 else loss


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    kind: str = "forward",
    beta: float = 0.5,
    ignore_index: int = -100,
) -> Tensor:
    r"""Knowledge distillation (Hinton, Vinyals and Dean 2015):

    ``alpha * cross_entropy(student, target) + (1 - alpha) * T**2 * kl_div_with_logits(student,
    teacher, temperature=T)``

    The cross-entropy is at temperature 1 over the non-ignored targets (mean); the soft term is
    the divergence at temperature T (batchmean over the rows whose target is not ignored) times
    T**2, which keeps its gradients the same size as T changes. Without ``target``, the soft term
    alone: ``T**2 * kl_div_with_logits(...)`` over every row.

    Examples
    --------
    >>> student = torch.randn(8, 100, requires_grad=True)
    >>> loss = logitops.functional.distillation_loss(student, torch.randn(8, 100),
    ...                                              torch.randint(0, 100, (8,)))
    """
    if not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = kl_div_with_logits(
        student_logits,
        teacher_logits,
        temperature=temperature,
        kind=kind,
        beta=beta,
        ignore_index=ignore_index,
        target=target,
    )
    soft = soft * (float(temperature) ** 2)
    if target is None:
        return soft
    vocab = student_logits.shape[-1]
    hard = cross_entropy(
        student_logits.reshape(-1, vocab), target.reshape(-1), ignore_index=ignore_index
    )
    return alpha * hard + (1 - alpha) * soft
