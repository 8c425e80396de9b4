"""Typed wrappers, fake kernels and autograd of the cross-entropy ops (csrc/*/cross_entropy.*)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _composite
from ._common import (
    REDUCTION_MEAN,
    REDUCTION_NONE,
    accumulation_dtype,
    fused_gradient,
    register_differentiable,
)

__all__ = [
    "scale_gradient_",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "cross_entropy_probs_backward",
    "cross_entropy_probs_forward",
]


def cross_entropy_forward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
    compute_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loss, per-row lse, total target weight and (when compute_grad) the fused gradient.

    logits [N, C] with unit stride along C, target int64 [N]. softcap 0 means off.
    """
    return _cross_entropy_forward(
        logits,
        target,
        weight,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        reduction,
        compute_grad,
    )


def cross_entropy_backward(
    grad_loss: Tensor,
    grad_lse: Tensor | None,
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    total_weight: Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
) -> Tensor:
    """Gradient of cross_entropy_forward's outputs with respect to logits, recomputed from lse."""
    return torch.ops.logitops.cross_entropy_backward.default(
        grad_loss,
        grad_lse,
        logits,
        target,
        weight,
        lse,
        total_weight,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        reduction,
    )


def scale_gradient_(grad: Tensor, scale: Tensor) -> None:
    """grad *= scale in place, scale a 0-dim tensor read on grad's device (free when it is 1)."""
    torch.ops.logitops.scale_gradient_.default(grad, scale)


@torch.library.register_fake("logitops::scale_gradient_")
def _scale_gradient_fake(grad, scale):
    torch._check(scale.dim() == 0, lambda: "scale must be 0-dim")


@torch.library.register_fake("logitops::cross_entropy_forward")
def _cross_entropy_forward_fake(
    logits,
    target,
    weight,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    reduction,
    compute_grad,
):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    torch._check(target.dim() == 1 and target.shape[0] == logits.shape[0])
    num_rows, num_classes = logits.shape
    acc = accumulation_dtype(logits.dtype)
    loss = logits.new_empty((num_rows,) if reduction == REDUCTION_NONE else ())
    lse = logits.new_empty((num_rows,), dtype=acc)
    total_weight = logits.new_empty((), dtype=acc)
    grad = logits.new_empty((num_rows, num_classes) if compute_grad else (0,))
    return loss, lse, total_weight, grad


@torch.library.register_fake("logitops::cross_entropy_backward")
def _cross_entropy_backward_fake(
    grad_loss,
    grad_lse,
    logits,
    target,
    weight,
    lse,
    total_weight,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    reduction,
):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output):
    (
        logits,
        target,
        weight,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        reduction,
        compute_grad,
    ) = inputs
    _, lse, total_weight, grad = output
    ctx.save_for_backward(logits, target, weight, lse, total_weight, grad)
    ctx.options = (ignore_index, label_smoothing, z_loss, softcap, reduction)
    ctx.compute_grad = compute_grad
    ctx.mark_non_differentiable(total_weight, grad)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, grad_lse, _grad_total_weight, _grad_grad):
    logits, target, weight, lse, total_weight, forward_grad = ctx.saved_tensors
    ignore_index, label_smoothing, z_loss, softcap, reduction = ctx.options
    if grad_loss is None and grad_lse is None:
        return (None,) * 9
    if _composite.needs_composite_backward(logits, upstream=(grad_loss, grad_lse)):
        # create_graph=True: the kernels' gradient has no graph, the composite's has.
        (grad_logits,) = _composite.recompute_vjp(
            lambda: _composite.cross_entropy(
                logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, reduction
            ),
            (logits,),
            (grad_loss, grad_lse),
        )
    else:
        if ctx.compute_grad and grad_lse is None:
            grad_logits = fused_gradient(
                ctx,
                forward_grad,
                grad_loss,
                reduction,
                lambda: _recomputed_gradient(ctx, grad_loss, grad_lse),
            )
        else:
            grad_logits = _recomputed_gradient(ctx, grad_loss, grad_lse)
    return (grad_logits,) + (None,) * 8


def _recomputed_gradient(ctx, grad_loss, grad_lse):
    logits, target, weight, lse, total_weight, _ = ctx.saved_tensors
    if grad_loss is None:
        reduction = ctx.options[-1]
        grad_loss = logits.new_zeros(target.shape if reduction == REDUCTION_NONE else ())
    return cross_entropy_backward(
        grad_loss, grad_lse, logits, target, weight, lse, total_weight, *ctx.options
    )


_cross_entropy_forward = register_differentiable(
    "logitops::cross_entropy_forward", _backward, _setup_context
)


# --- class-probability targets --------------------------------------------------------------


def cross_entropy_probs_forward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
    compute_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Loss, per-row lse and (when compute_grad) the fused gradient, for class-probability
    targets [N, C] of the logits' dtype. `mean` divides by N."""
    return _cross_entropy_probs_forward(
        logits, target, weight, label_smoothing, z_loss, softcap, reduction, compute_grad
    )


def cross_entropy_probs_backward(
    grad_loss: Tensor,
    grad_lse: Tensor | None,
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
) -> Tensor:
    """Gradient of cross_entropy_probs_forward's outputs with respect to logits."""
    return torch.ops.logitops.cross_entropy_probs_backward.default(
        grad_loss,
        grad_lse,
        logits,
        target,
        weight,
        lse,
        label_smoothing,
        z_loss,
        softcap,
        reduction,
    )


@torch.library.register_fake("logitops::cross_entropy_probs_forward")
def _cross_entropy_probs_forward_fake(
    logits, target, weight, label_smoothing, z_loss, softcap, reduction, compute_grad
):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    torch._check(target.shape == logits.shape, lambda: "target must have the logits' shape")
    num_rows, num_classes = logits.shape
    loss = logits.new_empty((num_rows,) if reduction == REDUCTION_NONE else ())
    lse = logits.new_empty((num_rows,), dtype=accumulation_dtype(logits.dtype))
    grad = logits.new_empty((num_rows, num_classes) if compute_grad else (0,))
    return loss, lse, grad


@torch.library.register_fake("logitops::cross_entropy_probs_backward")
def _cross_entropy_probs_backward_fake(
    grad_loss,
    grad_lse,
    logits,
    target,
    weight,
    lse,
    label_smoothing,
    z_loss,
    softcap,
    reduction,
):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    return logits.new_empty(logits.shape)


def _probs_setup_context(ctx, inputs, output):
    logits, target, weight, label_smoothing, z_loss, softcap, reduction, compute_grad = inputs
    _, lse, grad = output
    ctx.save_for_backward(logits, target, weight, lse, grad)
    ctx.options = (label_smoothing, z_loss, softcap, reduction)
    ctx.compute_grad = compute_grad
    ctx.mark_non_differentiable(grad)
    ctx.set_materialize_grads(False)


def _probs_backward(ctx, grad_loss, grad_lse, _grad_grad):
    logits, target, weight, lse, forward_grad = ctx.saved_tensors
    label_smoothing, z_loss, softcap, reduction = ctx.options
    if grad_loss is None and grad_lse is None:
        return (None,) * 8
    if _composite.needs_composite_backward(logits, target, upstream=(grad_loss, grad_lse)):
        grad_logits, grad_target = _composite.recompute_vjp(
            lambda: _composite.cross_entropy_probs(
                logits, target, weight, label_smoothing, z_loss, softcap, reduction
            ),
            (logits, target),
            (grad_loss, grad_lse),
        )
        return (grad_logits, grad_target) + (None,) * 6
    grad_logits = grad_target = None
    if ctx.needs_input_grad[0]:
        if ctx.compute_grad and grad_lse is None:
            grad_logits = fused_gradient(
                ctx,
                forward_grad,
                grad_loss,
                reduction,
                lambda: _probs_recomputed_gradient(ctx, grad_loss, grad_lse),
            )
        else:
            grad_logits = _probs_recomputed_gradient(ctx, grad_loss, grad_lse)
    if ctx.needs_input_grad[1] and grad_loss is not None:
        grad_target = _probs_target_gradient(
            grad_loss, logits, weight, lse, label_smoothing, softcap, reduction
        )
    return (grad_logits, grad_target) + (None,) * 6


def _probs_recomputed_gradient(ctx, grad_loss, grad_lse):
    logits, target, weight, lse, _ = ctx.saved_tensors
    if grad_loss is None:
        reduction = ctx.options[-1]
        grad_loss = logits.new_zeros((logits.shape[0],) if reduction == REDUCTION_NONE else ())
    return cross_entropy_probs_backward(
        grad_loss, grad_lse, logits, target, weight, lse, *ctx.options
    )


def _probs_target_gradient(grad_loss, logits, weight, lse, label_smoothing, softcap, reduction):
    """d loss / d t_c = -(1 - eps) w_c log_softmax(z)_c times the row's upstream gradient (the
    lse term does not depend on the target). Rarely needed (trained soft targets), so composed
    from torch ops over the saved lse."""
    acc = lse.dtype
    z = _composite.capped(logits, softcap)
    grad = (z - lse.unsqueeze(-1)) * -(1.0 - label_smoothing)
    if weight is not None:
        grad = grad * weight.to(acc)
    upstream = grad_loss.to(acc)
    if reduction == REDUCTION_NONE:
        upstream = upstream.unsqueeze(-1)
    elif reduction == REDUCTION_MEAN:
        upstream = upstream / logits.shape[0]
    return (grad * upstream).to(logits.dtype)


_cross_entropy_probs_forward = register_differentiable(
    "logitops::cross_entropy_probs_forward", _probs_backward, _probs_setup_context
)
