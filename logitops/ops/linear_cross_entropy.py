"""Typed wrappers, fake kernels and autograd of the fused linear + cross-entropy ops
(csrc/linear_cross_entropy.cpp, device-generic over the cross-entropy kernels)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _composite
from ._common import (
    REDUCTION_NONE,
    accumulation_dtype,
    rows_upstream,
    scale_forward_grad,
)

__all__ = [
    "linear_cross_entropy_backward",
    "linear_cross_entropy_composite",
    "linear_cross_entropy_forward",
]


def linear_cross_entropy_composite(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
    float32_logits: bool = False,
) -> Tensor:
    """The loss of ``linear_cross_entropy_forward`` as differentiable ATen ops (the [N, V]
    logits materialized), in the logits' dtype: for higher-order autograd, forward-mode AD and
    torch.func transforms, which the fused op does not support. ``float32_logits`` as the op's
    overload of that name (autocast)."""
    logits = F.linear(input, linear_weight, linear_bias)
    if float32_logits:
        logits = logits.to(accumulation_dtype(logits.dtype))
    loss, _ = _composite.cross_entropy(
        logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, reduction
    )
    return loss


def autocast_disabled(device_type: str):
    """A context without autocast on ``device_type`` (a no-op when it is off): the fused op's
    operands are already in the autocast dtype, and its inner matmuls write into buffers of that
    dtype, which autocast's re-casting would break."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


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
    reduction: str,
    chunk_size: int,
    compute_grad: bool,
    float32_logits: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Loss (in the accumulation dtype: float32 for half-precision inputs), per-row lse, total
    target weight and (when compute_grad, scalar reductions) the gradients of the reduced loss for
    input [N, H], linear_weight [V, H], linear_bias [V]. ``float32_logits`` (autocast) selects
    the overload that converts each chunk's logits to float32 before the cross-entropy."""
    op = torch.ops.logitops.linear_cross_entropy_forward
    return (op.float32_logits if float32_logits else op.default)(
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
    float32_logits: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients for per-row upstream gradients grad_rows [N], recomputing each chunk's logits."""
    op = torch.ops.logitops.linear_cross_entropy_backward
    return (op.float32_logits if float32_logits else op.default)(
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


@torch.library.register_fake("logitops::linear_cross_entropy_forward.float32_logits")
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
    torch._check(not (compute_grad and reduction == REDUCTION_NONE))
    acc = accumulation_dtype(input.dtype)
    num_rows = input.shape[0]
    loss = input.new_empty((num_rows,) if reduction == REDUCTION_NONE else (), dtype=acc)
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


@torch.library.register_fake("logitops::linear_cross_entropy_backward.float32_logits")
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


def _setup_context(ctx, inputs, output, float32_logits=False):
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
    ctx.float32_logits = float32_logits
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
    if _composite.needs_composite_backward(
        input, linear_weight, linear_bias, upstream=(grad_loss,)
    ):
        # create_graph=True (the gradients must have a graph themselves, which the fused kernels'
        # cannot) or vmap-batched upstream gradients: recompute through the composite (the
        # [N, V] logits materialized).
        def forward():
            return (
                linear_cross_entropy_composite(
                    input, linear_weight, linear_bias, target, weight,
                    ignore_index, label_smoothing, z_loss, softcap, reduction,
                    ctx.float32_logits,
                ),
            )  # fmt: skip

        with autocast_disabled(input.device.type):
            grads = _composite.recompute_vjp(
                forward, (input, linear_weight, linear_bias), (grad_loss.to(input.dtype),)
            )
        return (*grads,) + (None,) * 9
    with autocast_disabled(input.device.type):
        return _fused_backward(
            ctx, grad_loss, input, linear_weight, linear_bias, target, weight, lse, total_weight,
            grad_input, grad_weight, grad_bias,
        )  # fmt: skip


def _fused_backward(
    ctx, grad_loss, input, linear_weight, linear_bias, target, weight, lse, total_weight,
    grad_input, grad_weight, grad_bias,
):  # fmt: skip
    ignore_index, label_smoothing, z_loss, softcap, reduction, chunk_size = ctx.options
    acc = lse.dtype
    if reduction == REDUCTION_NONE or grad_weight.numel() != linear_weight.numel():
        # Per-row upstream gradients, or a forward that computed no gradients: recompute.
        grad_rows = rows_upstream(grad_loss, reduction, total_weight, input.shape[0], acc)
        grad_input, grad_weight, grad_bias = linear_cross_entropy_backward(
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
            ctx.float32_logits,
        )
    else:
        # The forward's gradients are of the reduced loss for an upstream gradient of 1.
        grad_input, grad_weight, grad_bias = (
            scale_forward_grad(g, grad_loss, reduction)
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
torch.library.register_autograd(
    "logitops::linear_cross_entropy_forward.float32_logits",
    _backward,
    setup_context=lambda ctx, inputs, output: _setup_context(ctx, inputs, output, True),
)
