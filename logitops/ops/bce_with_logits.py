"""Typed wrappers, fake kernels and autograd of the BCE-with-logits ops."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _composite
from ._common import REDUCTION_MEAN, REDUCTION_NONE, fused_gradient, register_differentiable

__all__ = ["bce_with_logits_forward", "bce_with_logits_backward"]


def bce_with_logits_forward(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Loss and (when compute_grad) its gradient for an upstream of 1. input / target [R, C];
    weight / pos_weight in the accumulation dtype, expanded to [R, C]."""
    return _bce_with_logits_forward(input, target, weight, pos_weight, reduction, compute_grad)


def bce_with_logits_backward(
    grad_loss: Tensor,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
) -> Tensor:
    """Gradient of bce_with_logits_forward's loss with respect to input."""
    return torch.ops.logitops.bce_with_logits_backward.default(
        grad_loss, input, target, weight, pos_weight, reduction
    )


@torch.library.register_fake("logitops::bce_with_logits_forward")
def _bce_forward_fake(input, target, weight, pos_weight, reduction, compute_grad):
    torch._check(input.dim() == 2, lambda: "input must be 2-D")
    torch._check(target.shape == input.shape, lambda: "target must have the input's shape")
    loss = input.new_empty(input.shape if reduction == REDUCTION_NONE else ())
    grad = input.new_empty(input.shape if compute_grad else (0,))
    return loss, grad


@torch.library.register_fake("logitops::bce_with_logits_backward")
def _bce_backward_fake(grad_loss, input, target, weight, pos_weight, reduction):
    torch._check(input.dim() == 2, lambda: "input must be 2-D")
    return input.new_empty(input.shape)


def _setup_context(ctx, inputs, output):
    input, target, weight, pos_weight, reduction, compute_grad = inputs
    ctx.save_for_backward(input, target, weight, pos_weight, output[1])
    ctx.reduction = reduction
    ctx.compute_grad = compute_grad
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _grad_grad):
    input, target, weight, pos_weight, forward_grad = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 6
    if _composite.needs_composite_backward(input, target, upstream=(grad_loss,)):
        # create_graph=True: the kernels' gradient has no graph, the composite's has.
        grad_input, grad_target = _composite.recompute_vjp(
            lambda: (_composite.bce_with_logits(input, target, weight, pos_weight, ctx.reduction),),
            (input, target),
            (grad_loss,),
        )
        return grad_input, grad_target, None, None, None, None
    grad_input = grad_target = None
    if ctx.needs_input_grad[0]:

        def recompute():
            return bce_with_logits_backward(
                grad_loss, input, target, weight, pos_weight, ctx.reduction
            )

        if ctx.compute_grad and ctx.reduction != REDUCTION_NONE:
            grad_input = fused_gradient(ctx, forward_grad, grad_loss, ctx.reduction, recompute)
        else:
            grad_input = recompute()
    if ctx.needs_input_grad[1]:
        grad_target = _target_gradient(grad_loss, input, weight, pos_weight, ctx.reduction)
    return grad_input, grad_target, None, None, None, None


def _target_gradient(grad_loss, input, weight, pos_weight, reduction):
    """d loss / d target = -z + (pos_weight - 1) * softplus(-z), times weight and upstream.
    Rarely needed (soft targets that are themselves trained), so composed from torch ops."""
    z = input.to(torch.float64 if input.dtype == torch.float64 else torch.float32)
    g = -z
    if pos_weight is not None:
        g = g + (pos_weight - 1) * torch.nn.functional.softplus(-z)
    if weight is not None:
        g = g * weight
    g = g * grad_loss
    if reduction == REDUCTION_MEAN:
        g = g / max(1, input.numel())
    return g.to(input.dtype)


_bce_with_logits_forward = register_differentiable(
    "logitops::bce_with_logits_forward", _backward, _setup_context
)
