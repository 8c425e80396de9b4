"""kl_div_with_logits and distillation_loss (ops.distillation)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import (
    check_floating,
    check_same_device,
    check_target_range,
    is_finite,
    validate_cuda_targets_enabled,
)
from ..ops import _composite
from ..ops import distillation as _distill_ops
from ..ops._common import REDUCTION_NONE, compute_grad, runs_cpu_kernels

__all__ = ["distillation_loss", "kl_div_with_logits"]


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

    Parameters
    ----------
    student_logits : Tensor
        [..., V], float32 / float64 / bfloat16 / float16; gets the gradient.
    teacher_logits : Tensor
        The student's shape, on its device (detached: no gradient).
    temperature : float
        T > 0; both softmaxes are taken of the logits divided by T.
    kind : {"forward", "reverse", "jsd"}
    beta : float
        The JSD's mixture weight, in [0, 1].
    ignore_index : int
        Rows whose ``target`` equals it are skipped.
    target : Tensor, optional
        Integer [...] (the logits' leading shape); only compared with ``ignore_index``.
    reduction : {"batchmean", "sum", "none"}

    Returns
    -------
    Tensor
        0-dim, or the leading shape [...] for ``reduction="none"``, in the student's dtype.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> student = torch.zeros(1, 2, requires_grad=True)  # Q = (1/2, 1/2)
    >>> teacher = torch.tensor([[3.0, 1.0]]).log()  # P = (3/4, 1/4)
    >>> loss = logitops.kl_div_with_logits(student, teacher)
    >>> round(loss.item(), 4)  # 3/4 log(3/2) + 1/4 log(1/2)
    0.1308
    >>> loss.backward()
    >>> student.grad  # Q - P
    tensor([[-0.2500,  0.2500]])
    >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
    >>> torch_kl = torch.nn.functional.kl_div(
    ...     s.log_softmax(-1), t.log_softmax(-1), reduction="batchmean", log_target=True
    ... )
    >>> torch.allclose(logitops.kl_div_with_logits(s, t), torch_kl)
    True
    """
    return _distillation(
        student_logits,
        teacher_logits,
        target,
        temperature=temperature,
        kind=kind,
        beta=beta,
        ignore_index=ignore_index,
        reduction=reduction,
        hard_weight=0.0,
        soft_weight=1.0,
    )


def _distillation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None,
    *,
    temperature: float,
    kind: str,
    beta: float,
    ignore_index: int,
    reduction: str,
    hard_weight: float,
    soft_weight: float,
) -> Tensor:
    """The checks and the one op call of both public functions: per row soft_weight times the
    divergence plus hard_weight times the cross-entropy at temperature 1 (which needs target)."""
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
    if not (is_finite(temperature) and float(temperature) > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if kind not in _distill_ops.DIVERGENCE_KINDS:
        raise ValueError(f"kind must be 'forward', 'reverse' or 'jsd', got {kind!r}")
    if not (0.0 <= float(beta) <= 1.0):
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if reduction not in _distill_ops.DISTILLATION_REDUCTIONS:
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
        # With the hard term on, the CPU kernel range-checks the targets itself.
        if hard_weight != 0 and not runs_cpu_kernels(student_logits):
            if validate_cuda_targets_enabled():
                check_target_range(target_1d, vocab, ignore_index, prefix="distillation_loss: ")
    student_2d = student_logits.reshape(-1, vocab)
    operands = (
        student_2d,
        teacher_logits.detach().reshape(-1, vocab).to(student_logits.dtype),
        target_1d,
        int(ignore_index),
        float(temperature),
        kind,
        float(beta),
        float(hard_weight),
        float(soft_weight),
        reduction,
    )
    if _composite.transforms_active(student_logits):
        loss = _composite.distillation(*operands)
    else:
        loss, _, _ = _distill_ops.distillation_forward(
            *operands, compute_grad(student_logits, reduction)
        )
    return loss.reshape(lead) if reduction == REDUCTION_NONE else loss


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
    T**2, which keeps its gradients the same size as T changes; both means divide by the same
    count of rows, so one fused kernel computes both terms per row (the student's log-sum-exp at
    temperature 1 beside the two at T) and writes one gradient,
    ``alpha (softmax(s) - onehot) + (1 - alpha) T d KL / d(s / T)`` over that count. Without
    ``target``, the soft term alone: ``T**2 * kl_div_with_logits(...)`` over every row.

    Parameters
    ----------
    student_logits, teacher_logits : Tensor
        [..., V], as for :func:`kl_div_with_logits`.
    target : Tensor, optional
        Class indices [...] for the hard term (and ``ignore_index`` for rows to skip).
    temperature : float
        T of the soft term.
    alpha : float
        The hard term's weight, in [0, 1].
    kind, beta, ignore_index
        As for :func:`kl_div_with_logits`.

    Returns
    -------
    Tensor
        0-dim, in the student's dtype.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> student = torch.randn(8, 100, requires_grad=True)
    >>> teacher, target = torch.randn(8, 100), torch.randint(0, 100, (8,))
    >>> loss = logitops.distillation_loss(student, teacher, target, temperature=2.0, alpha=0.5)
    >>> hard = logitops.cross_entropy(student, target)
    >>> soft = 2.0**2 * logitops.kl_div_with_logits(student, teacher, temperature=2.0)
    >>> torch.allclose(loss, 0.5 * hard + 0.5 * soft)
    True
    >>> loss.backward()
    """
    if not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not (is_finite(temperature) and float(temperature) > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    alpha, temperature = float(alpha), float(temperature)
    if target is not None and alpha == 0 and isinstance(target, torch.Tensor):
        # The targets are class indices even when their term has no weight (as they were when
        # the cross-entropy was a separate call); the kernels check them only for the hard term.
        if runs_cpu_kernels(student_logits) or validate_cuda_targets_enabled():
            check_target_range(
                target.reshape(-1),
                student_logits.shape[-1] if student_logits.dim() else 0,
                ignore_index,
                prefix="distillation_loss: ",
            )
    # One fused op: both terms' losses and one gradient for an upstream of 1 (the cross-entropy's
    # mean and the divergence's batchmean share the denominator, the non-ignored rows).
    return _distillation(
        student_logits,
        teacher_logits,
        target,
        temperature=temperature,
        kind=kind,
        beta=beta,
        ignore_index=ignore_index,
        reduction="batchmean",
        hard_weight=0.0 if target is None else alpha,
        soft_weight=temperature**2 if target is None else (1 - alpha) * temperature**2,
    )
