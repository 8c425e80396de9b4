"""Typed wrappers, fake kernels and autograd of the cross-entropy ops (csrc/*/cross_entropy.*)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import accumulation_dtype, is_plain_eager_tensor

__all__ = ["cross_entropy_forward", "cross_entropy_backward"]


def cross_entropy_forward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: int,
    compute_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loss, per-row lse, total target weight and (when compute_grad) the fused gradient.

    logits [N, C] with unit stride along C, target int64 [N]. softcap 0 means off.
    """
    return torch.ops.logitops.cross_entropy_forward.default(
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
    reduction: int,
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
    loss = logits.new_empty((num_rows,) if reduction == 0 else ())
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
    logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, reduction, fused = (
        inputs
    )
    _, lse, total_weight, grad = output
    ctx.save_for_backward(logits, target, weight, lse, total_weight, grad)
    ctx.options = (ignore_index, label_smoothing, z_loss, softcap, reduction)
    ctx.fused = fused
    ctx.mark_non_differentiable(total_weight, grad)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, grad_lse, _grad_total_weight, _grad_grad):
    logits, target, weight, lse, total_weight, fused_grad = ctx.saved_tensors
    ignore_index, label_smoothing, z_loss, softcap, reduction = ctx.options
    if grad_loss is None and grad_lse is None:
        return (None,) * 9
    if ctx.fused and grad_lse is None:
        # fused_grad is d loss / d logits for an upstream gradient of 1. Return it as is when
        # the upstream is 1 (the usual `loss.backward()`), which saves a pass over [N, C];
        # autograd copies it before accumulating if it is still saved for a retained graph.
        if reduction == 0:
            grad_logits = fused_grad * grad_loss.unsqueeze(-1).to(fused_grad.dtype)
        elif (
            is_plain_eager_tensor(grad_loss)
            and grad_loss.device.type == "cpu"
            and bool(grad_loss == 1)
        ):
            grad_logits = fused_grad
        else:
            grad_logits = fused_grad * grad_loss.to(fused_grad.dtype)
    else:
        if grad_loss is None:
            grad_loss = logits.new_zeros(target.shape) if reduction == 0 else logits.new_zeros(())
        grad_logits = cross_entropy_backward(
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
    return (grad_logits,) + (None,) * 8


torch.library.register_autograd(
    "logitops::cross_entropy_forward", _backward, setup_context=_setup_context
)
