"""Fused linear + cross-entropy: the [N, V] logits never exist at once.

The work is one dispatcher op, logitops::linear_cross_entropy_forward
(csrc/linear_cross_entropy.cpp): per chunk of tokens the logits tile (one matmul), the fused
cross-entropy forward and its gradient (our kernels), and that chunk's contributions to the
gradients of the input, the linear weight and bias, accumulated in float32 for half-precision
inputs. With a scalar reduction the forward computes all three gradients and the backward only
scales them; with reduction "none" the per-row upstream gradient is known only in the backward,
which recomputes the chunks (logitops::linear_cross_entropy_backward). Peak extra memory:
O(chunk x V + H x V), never O(N x V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._chunking import chunk_bytes, default_chunk_size
from .._dispatch import dtensor_handler
from .._validation import (
    check_cross_entropy_options,
    check_floating,
    check_linear_arguments,
    check_reduction,
    check_same_device,
    check_target_range,
    validate_cuda_targets_enabled,
)
from ..ops import _composite
from ..ops import linear_cross_entropy as _lce_ops
from ..ops._common import REDUCTION_NONE, runs_cpu_kernels
from .cross_entropy import cross_entropy

__all__ = ["linear_cross_entropy"]


def _autocast_dtype(input: Tensor) -> torch.dtype | None:
    """The dtype autocast runs ``F.linear`` in for this input (None when autocast is off on its
    device, or the input is float64, which autocast leaves alone)."""
    device_type = input.device.type
    if input.dtype == torch.float64 or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _options_chunk_size(options) -> int | None:
    """The token chunk of a ``torch.nn.LinearCrossEntropyOptions`` (its other fields configure
    torch's own chunked implementation and have no counterpart here)."""
    if options is None:
        return None
    size = getattr(options, "batch_chunk_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options=None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    r"""``cross_entropy(linear(input, linear_weight, linear_bias), target, ...)`` without ever
    holding the [N, V] logits: chunks of ``chunk_size`` tokens (default: about 64 MiB of logits
    each).

    The signature and defaults are those of :func:`torch.nn.functional.linear_cross_entropy`
    (``ignore_index=None`` means -100 for class indices; ``options``, a
    ``torch.nn.LinearCrossEntropyOptions``, only contributes its ``batch_chunk_size`` as the
    chunk size), plus ``z_loss`` and ``softcap`` as in :func:`logitops.cross_entropy` and
    ``chunk_size``. ``input`` is [..., H] with class-index ``target`` [...], ``linear_weight``
    [V, H], ``linear_bias`` [V]. PyTorch's other forms run unfused (``linear`` then
    :func:`logitops.cross_entropy`): class-probability targets [..., V], and K-dimensional heads
    ``linear_weight`` [V, d1, ..., dK, H] with input [N, H]. So do ``torch.func`` transforms and
    forward-mode AD, through differentiable ATen ops; a backward with ``create_graph=True``
    recomputes through them. Under ``torch.autocast`` the matmuls run in the autocast dtype and
    the loss is float32, as ``F.linear`` followed by ``F.cross_entropy``.

    Parameters
    ----------
    input : Tensor
        Hidden states [..., H].
    linear_weight : Tensor
        The head's weight [V, H] (or [V, d1, ..., dK, H], unfused).
    target : Tensor
        Class indices [...] (or class probabilities [..., V], unfused).
    linear_bias : Tensor, optional
        The head's bias [V].
    weight, reduction, ignore_index, label_smoothing, options
        As in :func:`torch.nn.functional.linear_cross_entropy`.
    z_loss, softcap
        As in :func:`logitops.cross_entropy`.
    chunk_size : int, optional
        Tokens per chunk (default: about 64 MiB of logits).

    Returns
    -------
    Tensor
        0-dim, or the target's shape for ``reduction="none"``; float32 under autocast.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> hidden = torch.randn(64, 32, requires_grad=True)
    >>> lm_head = torch.randn(1000, 32, requires_grad=True)
    >>> target = torch.randint(0, 1000, (64,))
    >>> loss = logitops.linear_cross_entropy(hidden, lm_head, target, chunk_size=16)
    >>> unfused = torch.nn.functional.cross_entropy(hidden @ lm_head.T, target)
    >>> torch.allclose(loss, unfused)
    True
    >>> loss.backward()  # the gradients of hidden and lm_head, also chunk by chunk
    >>> hidden.grad.shape, lm_head.grad.shape
    (torch.Size([64, 32]), torch.Size([1000, 32]))
    """
    handler = dtensor_handler(
        "linear_cross_entropy", input, linear_weight, target, linear_bias, weight
    )
    if handler is not None:  # DTensor arguments: logitops.dtensor
        return handler(
            input, linear_weight, target, linear_bias=linear_bias, weight=weight,
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
            options=options, z_loss=z_loss, softcap=softcap, chunk_size=chunk_size,
        )  # fmt: skip
    reduction = check_reduction(reduction)
    if chunk_size is None:
        chunk_size = _options_chunk_size(options)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if isinstance(linear_weight, Tensor) and linear_weight.dim() > 2:
        return _unfused(
            input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
            label_smoothing, z_loss, softcap,
        )  # fmt: skip
    check_linear_arguments(input, linear_weight, linear_bias)
    check_same_device("target", target, input)
    vocab = linear_weight.shape[0]
    if target.is_floating_point() and target.shape == (*input.shape[:-1], vocab):
        return _unfused(
            input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
            label_smoothing, z_loss, softcap,
        )  # fmt: skip
    if target.is_floating_point() or target.dtype == torch.bool or target.shape != input.shape[:-1]:
        raise ValueError(
            f"target must be integer class indices of shape {tuple(input.shape[:-1])} or "
            f"class probabilities of shape {(*input.shape[:-1], vocab)}, got {target.dtype} "
            f"{tuple(target.shape)}"
        )
    if weight is not None:
        check_floating("weight", weight)
        if weight.shape != (vocab,):
            raise ValueError(f"weight must be [{vocab}], got {tuple(weight.shape)}")
    check_cross_entropy_options(label_smoothing, z_loss, softcap)
    ignore_index = -100 if ignore_index is None else int(ignore_index)
    cap = 0.0 if softcap is None else float(softcap)
    lead = input.shape[:-1]
    # Autocast: the matmul in the autocast dtype, the cross-entropy (an fp32 op) on those logits
    # with a float32 loss, as F.linear followed by F.cross_entropy.
    cast = _autocast_dtype(input)
    dtype = input.dtype if cast is None else cast
    x = input.reshape(-1, input.shape[-1]).to(dtype)
    w = linear_weight.to(dtype)
    b = None if linear_bias is None else linear_bias.to(dtype)
    t = target.reshape(-1).to(torch.int64)
    if _composite.transforms_active(input, linear_weight, linear_bias):
        # torch.func transforms and forward-mode tangents: differentiable ATen ops throughout.
        with _lce_ops.autocast_disabled(x.device.type):
            logits = F.linear(x, w, b)
            if cast is not None:
                logits = logits.float()
            out, _ = _composite.cross_entropy(
                logits,
                t,
                weight,
                ignore_index,
                float(label_smoothing),
                float(z_loss),
                cap,
                reduction,
            )
        return out.reshape(lead) if reduction == REDUCTION_NONE else out
    if chunk_size is None:
        # under autocast each chunk's logits are also held in float32
        chunk_size = default_chunk_size(
            x.shape[0], vocab, 4 if cast is not None else x.element_size(), chunk_bytes(x.device)
        )
    if not runs_cpu_kernels(x) and validate_cuda_targets_enabled():
        check_target_range(t, vocab, ignore_index)
    needs_grad = torch.is_grad_enabled() and any(
        v is not None and v.requires_grad for v in (input, linear_weight, linear_bias)
    )
    with _lce_ops.autocast_disabled(x.device.type):
        out = _lce_ops.linear_cross_entropy_forward(
            x,
            w,
            b,
            t,
            weight,
            ignore_index,
            float(label_smoothing),
            float(z_loss),
            cap,
            reduction,
            int(chunk_size),
            needs_grad and reduction != REDUCTION_NONE,
            float32_logits=cast is not None,
        )[0]
    # The op's loss is in the accumulation dtype: float32 under autocast, as its cross-entropy.
    out = out.to(input.dtype if cast is None else torch.float32)
    return out.reshape(lead) if reduction == REDUCTION_NONE else out


def _unfused(
    input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
    label_smoothing, z_loss, softcap,
):  # fmt: skip
    """PyTorch's forms without a fused path: the logits materialized by ``F.linear`` (in the
    autocast dtype under autocast, then float32), then :func:`logitops.cross_entropy`."""
    check_floating("input", input)
    check_floating("linear_weight", linear_weight)
    if input.dim() not in (1, 2) or input.shape[-1] != linear_weight.shape[-1]:
        raise ValueError(
            f"linear_weight must be [vocab, ..., {input.shape[-1] if input.dim() else '?'}] for "
            f"input of shape {tuple(input.shape)}, got {tuple(linear_weight.shape)}"
        )
    num_classes, out_features = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    if out_features and input.dim() != 2:
        raise ValueError(
            f"a K-dimensional linear_weight {tuple(linear_weight.shape)} needs input [N, "
            f"{input.shape[-1]}], got {tuple(input.shape)}"
        )
    if linear_bias is not None and tuple(linear_bias.shape) != (num_classes, *out_features):
        raise ValueError(
            f"linear_bias must be {(num_classes, *out_features)}, got {tuple(linear_bias.shape)}"
        )
    logits_shape = (*input.shape[:-1], num_classes, *out_features)
    if target.is_floating_point() and tuple(target.shape) == logits_shape:
        if ignore_index is not None:
            raise ValueError(
                "ignore_index cannot be specified when target contains probabilities, got "
                f"ignore_index={ignore_index}"
            )
    elif ignore_index is None:
        ignore_index = -100
    cast = _autocast_dtype(input)
    dtype = input.dtype if cast is None else cast
    flat_weight = linear_weight.reshape(-1, linear_weight.shape[-1]).to(dtype)
    flat_bias = None if linear_bias is None else linear_bias.reshape(-1).to(dtype)
    with _lce_ops.autocast_disabled(input.device.type):
        logits = F.linear(input.to(dtype), flat_weight, flat_bias).reshape(logits_shape)
        if cast is not None:
            logits = logits.float()
        return cross_entropy(
            logits,
            target,
            weight,
            ignore_index=-100 if ignore_index is None else ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
        )
