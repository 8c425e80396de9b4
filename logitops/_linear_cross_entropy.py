"""Fused linear + cross-entropy: the [N, V] logits never exist at once.

Tokens are processed in chunks: per chunk the logits tile (one matmul), the fused cross-entropy
forward and its gradient (our kernels), and that chunk's contributions to the gradients of the
input, the linear weight and bias, accumulated in float32 for half-precision inputs. With a scalar
reduction the forward computes all three gradients and the backward only scales them; with
reduction "none" the per-row upstream gradient is known only in the backward, which recomputes
the chunks. Peak extra memory: O(chunk x V + H x V), never O(N x V).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ops import cross_entropy as _ce_ops
from .ops._common import accumulation_dtype

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def default_chunk_size(num_tokens: int, vocab: int, element_size: int) -> int:
    """Tokens per chunk: about 64 MiB of logits (and as much again for their gradient)."""
    return max(1, min(num_tokens, (64 << 20) // max(1, vocab * element_size)))


def _chunks(num_tokens: int, chunk_size: int):
    for start in range(0, num_tokens, chunk_size):
        yield start, min(num_tokens, start + chunk_size)


class _Gradients:
    """dX, dW and db of the linear layer, filled chunk by chunk from the logits' gradient
    (weight and bias in float32 for half-precision inputs)."""

    def __init__(self, input: Tensor, linear_weight: Tensor, with_bias: bool) -> None:
        self.acc = accumulation_dtype(input.dtype)
        self.input = torch.empty_like(input)
        self.weight = torch.zeros(linear_weight.shape, dtype=self.acc, device=input.device)
        self.bias = (
            torch.zeros(linear_weight.shape[0], dtype=self.acc, device=input.device)
            if with_bias
            else None
        )

    def add(self, start: int, end: int, x: Tensor, linear_weight: Tensor, grad: Tensor) -> None:
        self.input[start:end] = grad @ linear_weight
        self.weight.addmm_(grad.t().to(self.acc), x.to(self.acc))
        if self.bias is not None:
            self.bias += grad.to(self.acc).sum(0)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, linear_weight, linear_bias, target, class_weight, options):
        ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_size = options
        code = _REDUCTIONS[reduction]
        num_tokens = input.shape[0]
        acc = accumulation_dtype(input.dtype)
        needs_grad = any(ctx.needs_input_grad[:3]) and code != 0
        grads = _Gradients(input, linear_weight, linear_bias is not None) if needs_grad else None
        losses, totals = [], []
        for start, end in _chunks(num_tokens, chunk_size):
            x = input[start:end]
            logits = torch.nn.functional.linear(x, linear_weight, linear_bias)
            fuse = needs_grad and logits.device.type == "cpu"
            # Per chunk "sum" (or "none"); the mean's normalizer is applied once at the end.
            loss, lse, total, grad = _ce_ops.cross_entropy_forward(
                logits,
                target[start:end],
                class_weight,
                ignore_index,
                label_smoothing,
                z_loss,
                softcap,
                0 if code == 0 else 2,
                fuse,
            )
            losses.append(loss)
            totals.append(total)
            if needs_grad:
                if not fuse:
                    grad = _ce_ops.cross_entropy_backward(
                        logits.new_ones(()),
                        None,
                        logits,
                        target[start:end],
                        class_weight,
                        lse,
                        total,
                        ignore_index,
                        label_smoothing,
                        z_loss,
                        softcap,
                        2,
                    )
                grads.add(start, end, x, linear_weight, grad)
            del logits
        if code == 0:
            out = torch.cat(losses) if losses else input.new_empty((0,))
        else:
            out = torch.stack(losses).to(acc).sum() if losses else input.new_zeros((), dtype=acc)
        total_weight = torch.stack(totals).sum() if totals else input.new_zeros((), dtype=acc)
        if code == 1:
            out = out / total_weight
        ctx.options = options
        saved = (grads.input, grads.weight, grads.bias) if grads is not None else (None,) * 3
        ctx.save_for_backward(
            input, linear_weight, linear_bias, target, class_weight, total_weight, *saved
        )
        return out.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (
            input,
            linear_weight,
            linear_bias,
            target,
            class_weight,
            total_weight,
            grad_input,
            grad_weight,
            grad_bias,
        ) = ctx.saved_tensors
        ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_size = ctx.options
        if reduction == "none":
            grad_input, grad_weight, grad_bias = _recompute_gradients(
                grad_out, input, linear_weight, linear_bias, target, class_weight, ctx.options
            )
        else:
            scale = grad_out.to(total_weight.dtype)
            if reduction == "mean":
                scale = scale / total_weight
            grad_input = grad_input * scale.to(grad_input.dtype)
            grad_weight = grad_weight * scale
            grad_bias = grad_bias * scale if grad_bias is not None else None
        return (
            grad_input if ctx.needs_input_grad[0] else None,
            grad_weight.to(linear_weight.dtype) if ctx.needs_input_grad[1] else None,
            grad_bias.to(linear_bias.dtype) if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
        )


def _recompute_gradients(
    grad_rows, input, linear_weight, linear_bias, target, class_weight, options
):
    ignore_index, _, label_smoothing, z_loss, softcap, chunk_size = options
    grads = _Gradients(input, linear_weight, linear_bias is not None)
    for start, end in _chunks(input.shape[0], chunk_size):
        x = input[start:end]
        logits = torch.nn.functional.linear(x, linear_weight, linear_bias)
        _, lse, total, _ = _ce_ops.cross_entropy_forward(
            logits,
            target[start:end],
            class_weight,
            ignore_index,
            label_smoothing,
            z_loss,
            softcap,
            0,
            False,
        )
        grad = _ce_ops.cross_entropy_backward(
            grad_rows[start:end].to(logits.dtype),
            None,
            logits,
            target[start:end],
            class_weight,
            lse,
            total,
            ignore_index,
            label_smoothing,
            z_loss,
            softcap,
            0,
        )
        grads.add(start, end, x, linear_weight, grad)
    return grads.input, grads.weight, grads.bias


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    r"""``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` without ever holding
    the [N, V] logits: chunks of ``chunk_size`` tokens (default: about 64 MiB of logits each).

    Argument names follow :func:`torch.nn.functional.linear_cross_entropy`; ``z_loss`` and
    ``softcap`` are as in :func:`logitops.cross_entropy`. ``input`` is [..., H] with ``target``
    [...] (class indices), ``linear_weight`` [V, H], ``linear_bias`` [V].

    Examples
    --------
    >>> hidden = torch.randn(1024, 256, requires_grad=True)
    >>> lm_head = torch.randn(32000, 256, requires_grad=True)
    >>> loss = logitops.linear_cross_entropy(hidden, lm_head, torch.randint(0, 32000, (1024,)))
    >>> loss.backward()
    """
    from .functional import _check_options  # shared argument checks of cross_entropy
    from .ops._common import check_floating, check_same_device, reduction_code

    reduction_code(reduction)
    check_floating("input", input)
    check_floating("linear_weight", linear_weight)
    check_same_device("linear_weight", linear_weight, input)
    check_same_device("target", target, input)
    if linear_weight.dim() != 2 or input.dim() < 1 or input.shape[-1] != linear_weight.shape[1]:
        raise ValueError(
            f"linear_weight must be [vocab, {input.shape[-1] if input.dim() else '?'}] for input "
            f"of shape {tuple(input.shape)}, got {tuple(linear_weight.shape)}"
        )
    if linear_bias is not None:
        check_floating("linear_bias", linear_bias)
        check_same_device("linear_bias", linear_bias, input)
        if linear_bias.shape != (linear_weight.shape[0],):
            raise ValueError(
                f"linear_bias must be [{linear_weight.shape[0]}], got {tuple(linear_bias.shape)}"
            )
    if target.is_floating_point() or target.shape != input.shape[:-1]:
        raise ValueError(
            f"target must be integer class indices of shape "
            f"{tuple(input.shape[:-1])}, got {target.dtype} {tuple(target.shape)}"
        )
    if weight is not None:
        check_floating("weight", weight)
        if weight.shape != (linear_weight.shape[0],):
            raise ValueError(
                f"weight must be [{linear_weight.shape[0]}], got {tuple(weight.shape)}"
            )
    _check_options(label_smoothing, z_loss, softcap)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    lead = input.shape[:-1]
    x = input.reshape(-1, input.shape[-1])
    t = target.reshape(-1).to(torch.int64)
    vocab = linear_weight.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(x.shape[0], vocab, x.element_size())
    if x.device.type != "cpu":
        from .functional import _check_target_range

        _check_target_range(t, vocab, ignore_index)
    options = (
        int(ignore_index),
        reduction,
        float(label_smoothing),
        float(z_loss),
        0.0 if softcap is None else float(softcap),
        int(chunk_size),
    )
    out = _LinearCrossEntropy.apply(
        x,
        linear_weight.to(x.dtype),
        None if linear_bias is None else linear_bias.to(x.dtype),
        t,
        weight,
        options,
    )
    return out.reshape(lead) if reduction == "none" else out
