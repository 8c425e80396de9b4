"""Typed wrappers, fake kernels and autograd of the distillation divergence ops."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _composite
from ._common import (
    DISTILLATION_REDUCTIONS,
    DIVERGENCE_KINDS,
    REDUCTION_NONE,
    accumulation_dtype,
    fused_gradient,
    register_differentiable,
)

__all__ = [
    "DISTILLATION_REDUCTIONS",
    "DIVERGENCE_KINDS",
    "distillation_backward",
    "distillation_forward",
]


def distillation_forward(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    ignore_index: int,
    temperature: float,
    kind: str,
    beta: float,
    hard_weight: float,
    soft_weight: float,
    reduction: str,
    compute_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Loss (soft_weight times the divergence at T plus hard_weight times the cross-entropy at
    T = 1 per row, reduced), counted rows and (when compute_grad) the student gradient for an
    upstream of 1."""
    return _distillation_forward(
        student,
        teacher,
        target,
        ignore_index,
        temperature,
        kind,
        beta,
        hard_weight,
        soft_weight,
        reduction,
        compute_grad,
    )


def distillation_backward(
    grad_loss: Tensor,
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    ignore_index: int,
    temperature: float,
    kind: str,
    beta: float,
    hard_weight: float,
    soft_weight: float,
    reduction: str,
    row_count: Tensor,
) -> Tensor:
    """Gradient of distillation_forward's loss with respect to the student logits."""
    return torch.ops.logitops.distillation_backward.default(
        grad_loss,
        student,
        teacher,
        target,
        ignore_index,
        temperature,
        kind,
        beta,
        hard_weight,
        soft_weight,
        reduction,
        row_count,
    )


@torch.library.register_fake("logitops::distillation_forward")
def _forward_fake(
    student,
    teacher,
    target,
    ignore_index,
    temperature,
    kind,
    beta,
    hard_weight,
    soft_weight,
    reduction,
    compute_grad,
):
    torch._check(student.dim() == 2, lambda: "student logits must be 2-D")
    torch._check(teacher.shape == student.shape, lambda: "teacher must match the student")
    rows = student.shape[0]
    loss = student.new_empty((rows,) if reduction == REDUCTION_NONE else ())
    row_count = student.new_empty((), dtype=accumulation_dtype(student.dtype))
    grad = student.new_empty(student.shape if compute_grad else (0,))
    return loss, row_count, grad


@torch.library.register_fake("logitops::distillation_backward")
def _backward_fake(
    grad_loss,
    student,
    teacher,
    target,
    ignore_index,
    temperature,
    kind,
    beta,
    hard_weight,
    soft_weight,
    reduction,
    row_count,
):
    torch._check(student.dim() == 2, lambda: "student logits must be 2-D")
    return student.new_empty(student.shape)


def _setup_context(ctx, inputs, output):
    student, teacher, target, *options, compute_grad = inputs
    _, row_count, grad = output
    ctx.save_for_backward(student, teacher, target, row_count, grad)
    # (ignore_index, temperature, kind, beta, hard_weight, soft_weight, reduction): the backward
    # ops' own order.
    ctx.options = tuple(options)
    ctx.compute_grad = compute_grad
    ctx.mark_non_differentiable(row_count, grad)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _grad_count, _grad_grad):
    student, teacher, target, row_count, forward_grad = ctx.saved_tensors
    options = ctx.options
    reduction = options[-1]
    if grad_loss is None or not ctx.needs_input_grad[0]:
        return (None,) * 11
    if _composite.needs_composite_backward(student, upstream=(grad_loss,)):
        # create_graph=True: the kernels' gradient has no graph, the composite's has.
        (grad,) = _composite.recompute_vjp(
            lambda: (_composite.distillation(student, teacher, target, *options),),
            (student,),
            (grad_loss,),
        )
    else:

        def recompute():
            return distillation_backward(grad_loss, student, teacher, target, *options, row_count)

        if ctx.compute_grad:
            grad = fused_gradient(ctx, forward_grad, grad_loss, reduction, recompute)
        else:
            grad = recompute()
    return (grad,) + (None,) * 10


_distillation_forward = register_differentiable(
    "logitops::distillation_forward", _backward, _setup_context
)
