"""binary_cross_entropy_with_logits (ops.bce_with_logits)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction

from .._validation import check_floating, check_reduction, check_same_device
from ..ops import _composite
from ..ops import bce_with_logits as _bce_ops
from ..ops._common import REDUCTION_NONE, accumulation_dtype, compute_grad

__all__ = ["binary_cross_entropy_with_logits"]


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
    size_average, reduce
        PyTorch's deprecated reduction arguments, as in torch.
    reduction : {"mean", "sum", "none"}
    pos_weight : Tensor, optional
        Weight of positive examples, broadcast along the last (class) dimension.

    Returns
    -------
    Tensor
        0-dim, or the input's shape for ``reduction="none"``, in the input's dtype.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logits = torch.zeros(2, 3, requires_grad=True)  # sigmoid 0.5: the loss is log(2)
    >>> loss = logitops.binary_cross_entropy_with_logits(logits, torch.ones(2, 3))
    >>> round(loss.item(), 4)
    0.6931
    >>> loss.backward()
    >>> logits.grad  # (sigmoid - target) / numel
    tensor([[-0.0833, -0.0833, -0.0833],
            [-0.0833, -0.0833, -0.0833]])
    >>> pos_weight = torch.full((3,), 3.0)  # positives count three times
    >>> loss = logitops.binary_cross_entropy_with_logits(
    ...     torch.zeros(2, 3), torch.ones(2, 3), pos_weight=pos_weight
    ... )
    >>> round(loss.item(), 4)
    2.0794
    """
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    reduction = check_reduction(reduction)
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
        reduction,
    )
    if _composite.transforms_active(input, target, weight, pos_weight):
        loss = _composite.bce_with_logits(*operands)
    else:
        # reduction "none" recomputes in the backward: its upstream gradient is a full tensor.
        loss, _ = _bce_ops.bce_with_logits_forward(
            *operands, reduction != REDUCTION_NONE and compute_grad(input, reduction)
        )
    return loss.reshape(input.shape) if reduction == REDUCTION_NONE else loss
