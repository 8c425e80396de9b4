"""cross_entropy: class-index and class-probability targets (ops.cross_entropy)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction

from .._dispatch import dtensor_handler
from .._validation import (
    check_cross_entropy_options,
    check_floating,
    check_reduction,
    check_same_device,
    check_target_range,
    validate_cuda_targets_enabled,
)
from ..ops import _composite
from ..ops import cross_entropy as _ce_ops
from ..ops._common import REDUCTION_NONE, compute_grad, runs_cpu_kernels

__all__ = ["cross_entropy"]


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
    input : Tensor
        Logits (C), (N, C) or (N, C, d1, ..., dK); float32 / float64 / bfloat16 / float16.
    target : Tensor
        Class indices (integer, the input's shape without C) or class probabilities (floating,
        the input's shape).
    weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As in :func:`torch.nn.functional.cross_entropy`.
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
    Tensor, or (Tensor, Tensor) with ``return_lse``
        The loss (0-dim, or the target's shape for ``reduction="none"``) in the input's dtype.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logits = torch.zeros(2, 4, requires_grad=True)  # uniform: the loss is log(4)
    >>> loss = logitops.cross_entropy(logits, torch.tensor([0, 3]))
    >>> round(loss.item(), 4)
    1.3863
    >>> loss.backward()
    >>> logits.grad  # (softmax - one_hot) / N
    tensor([[-0.3750,  0.1250,  0.1250,  0.1250],
            [ 0.1250,  0.1250,  0.1250, -0.3750]])
    >>> x, t = torch.randn(8, 100), torch.randint(0, 100, (8,))
    >>> ours = logitops.cross_entropy(x, t, label_smoothing=0.1)
    >>> torch.allclose(ours, torch.nn.functional.cross_entropy(x, t, label_smoothing=0.1))
    True
    >>> loss, lse = logitops.cross_entropy(x, t, z_loss=1e-4, return_lse=True)
    >>> torch.allclose(lse, torch.logsumexp(x, dim=1))
    True
    """
    handler = dtensor_handler("cross_entropy", input, target, weight)
    if handler is not None:  # DTensor arguments: logitops.dtensor
        return handler(
            input, target, weight, size_average, ignore_index, reduce, reduction,
            label_smoothing, z_loss=z_loss, softcap=softcap, return_lse=return_lse,
        )  # fmt: skip
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    reduction = check_reduction(reduction)
    check_floating("input", input)
    if input.dim() == 0:
        raise ValueError("input must have at least 1 dimension (C), (N, C) or (N, C, d1, ...)")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    check_same_device("target", target, input)
    if weight is not None:
        check_floating("weight", weight)
        check_same_device("weight", weight, input)
    check_cross_entropy_options(label_smoothing, z_loss, softcap)

    class_dim = 0 if input.dim() == 1 else 1
    num_classes = input.shape[class_dim]
    if num_classes == 0:
        raise ValueError(f"input must have at least one class, got shape {tuple(input.shape)}")
    if weight is not None and (weight.dim() != 1 or weight.shape[0] != num_classes):
        raise ValueError(
            f"weight must be a 1-D tensor of {num_classes} class weights, got shape "
            f"{tuple(weight.shape)}"
        )
    if input.dim() == 2:  # the common case, without the two views (a few us at small shapes)
        logits_2d = input
    else:
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
        options = (weight, float(label_smoothing), float(z_loss), cap, reduction)
        if _composite.transforms_active(input, target, weight):
            loss, lse = _composite.cross_entropy_probs(logits_2d, probs_2d, *options)
        else:
            loss, lse, _ = _ce_ops.cross_entropy_probs_forward(
                logits_2d, probs_2d, *options, compute_grad(input, reduction)
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
        target_1d = target if target.dim() == 1 else target.reshape(-1)
        target_1d = target_1d.to(torch.int64)
        if not runs_cpu_kernels(input) and validate_cuda_targets_enabled():
            check_target_range(target_1d, num_classes, ignore_index)
        options = (weight, int(ignore_index), float(label_smoothing), float(z_loss), cap, reduction)
        if _composite.transforms_active(input, weight):
            loss, lse = _composite.cross_entropy(logits_2d, target_1d, *options)
        else:
            loss, lse, _, _ = _ce_ops.cross_entropy_forward(
                logits_2d, target_1d, *options, compute_grad(input, reduction)
            )

    out_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    if reduction == REDUCTION_NONE:
        loss = loss.reshape(out_shape)
    if return_lse:
        return loss, lse.reshape(out_shape)
    return loss
