"""Typed wrappers, fake kernels and autograd of the fused linear + cross-entropy ops
(csrc/linear_cross_entropy.cpp, device-generic over the cross-entropy kernels)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import REDUCTION_CODES, accumulation_dtype, scale_fused_gradient

__all__ = ["linear_cross_entropy_backward", "linear_cross_entropy_forward"]


def linear_cross_entropy_forward(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: int,
    chunk_size: int,
    compute_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Loss, per-row lse, total target weight and (when compute_grad, scalar reductions) the
    gradients of the summed loss for input [N, H], linear_weight [V, H], linear_bias [V]."""
    return torch.ops.logitops.linear_cross_entropy_forward.default(
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        reduction,
        chunk_size,
        compute_grad,
    )


def linear_cross_entropy_backward(
    grad_rows: Tensor,
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients for per-row upstream gradients grad_rows [N], recomputing each chunk's logits."""
    return torch.ops.logitops.linear_cross_entropy_backward.default(
        grad_rows,
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        lse,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        chunk_size,
    )


def _gradient_shapes(input, linear_weight, linear_bias):
    acc = accumulation_dtype(input.dtype)
    vocab = linear_weight.shape[0]
    return (
        input.new_empty(input.shape),
        input.new_empty(linear_weight.shape, dtype=acc),
        input.new_empty((vocab,) if linear_bias is not None else (0,), dtype=acc),
    )


@torch.library.register_fake("logitops::linear_cross_entropy_forward")
def _forward_fake(
    input,
    linear_weight,
    linear_bias,
    target,
    weight,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    reduction,
    chunk_size,
    compute_grad,
):
    torch._check(input.dim() == 2, lambda: "input must be 2-D")
    torch._check(linear_weight.dim() == 2 and linear_weight.shape[1] == input.shape[1])
    torch._check(not (compute_grad and reduction == REDUCTION_CODES["none"]))
    acc = accumulation_dtype(input.dtype)
    num_rows = input.shape[0]
    loss = input.new_empty((num_rows,) if reduction == REDUCTION_CODES["none"] else ())
    lse = input.new_empty((num_rows,), dtype=acc)
    total_weight = input.new_empty((), dtype=acc)
    if compute_grad:
        vocab = linear_weight.shape[0]
        grads = (
            input.new_empty(input.shape),
            input.new_empty(linear_weight.shape),
            input.new_empty((vocab,) if linear_bias is not None else (0,)),
        )
    else:
        grads = (input.new_empty((0,)), input.new_empty((0,)), input.new_empty((0,)))
    return (loss, lse, total_weight) + grads


@torch.library.register_fake("logitops::linear_cross_entropy_backward")
def _backward_fake(
    grad_rows,
    input,
    linear_weight,
    linear_bias,
    target,
    weight,
    lse,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    chunk_size,
):
    torch._check(input.dim() == 2, lambda: "input must be 2-D")
    return _gradient_shapes(input, linear_weight, linear_bias)


def _setup_context(ctx, inputs, output):
    (
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        reduction,
        chunk_size,
        _,
    ) = inputs
    _, lse, total_weight, grad_input, grad_weight, grad_bias = output
    ctx.save_for_backward(
        input, linear_weight, linear_bias, target, weight, lse, total_weight,
        grad_input, grad_weight, grad_bias,
    )  # fmt: skip
    ctx.options = (ignore_index, label_smoothing, z_loss, softcap, reduction, chunk_size)
    ctx.mark_non_differentiable(lse, total_weight, grad_input, grad_weight, grad_bias)


def _backward(ctx, grad_loss, *_):
    (
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        lse,
        total_weight,
        grad_input,
        grad_weight,
        grad_bias,
    ) = ctx.saved_tensors
    ignore_index, label_smoothing, z_loss, softcap, reduction, chunk_size = ctx.options
    acc = lse.dtype
    if reduction == REDUCTION_CODES["none"] or grad_weight.numel() != linear_weight.numel():
        # Per-row upstream gradients, or a forward that computed no gradients: recompute.
        grad_rows = grad_loss.to(acc)
        if reduction != REDUCTION_CODES["none"]:
            if reduction == REDUCTION_CODES["mean"]:
                grad_rows = torch.where(total_weight != 0, grad_rows / total_weight, 0.0)
            grad_rows = grad_rows.expand(input.shape[0])
        grad_input, grad_weight, grad_bias = linear_cross_entropy_backward(
            grad_rows.contiguous(),
            input,
            linear_weight,
            linear_bias,
            target,
            weight,
            lse,
            ignore_index,
            label_smoothing,
            z_loss,
            softcap,
            chunk_size,
        )
    else:
        # The forward's gradients are of the reduced loss for an upstream gradient of 1.
        grad_input, grad_weight, grad_bias = (
            scale_fused_gradient(g, grad_loss, reduction)
            for g in (grad_input, grad_weight, grad_bias)
        )
    return (
        grad_input if ctx.needs_input_grad[0] else None,
        grad_weight.to(linear_weight.dtype) if ctx.needs_input_grad[1] else None,
        grad_bias.to(linear_bias.dtype) if ctx.needs_input_grad[2] else None,
    ) + (None,) * 9


torch.library.register_autograd(
    "logitops::linear_cross_entropy_forward", _backward, setup_context=_setup_context
)
