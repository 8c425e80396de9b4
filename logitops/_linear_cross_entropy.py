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
from torch import Tensor

from .ops import linear_cross_entropy as _ops
from .ops._common import (
    accumulation_dtype,
    check_floating,
    check_same_device,
    validate_cuda_targets_enabled,
)


def default_chunk_size(num_tokens: int, vocab: int, element_size: int) -> int:
    """Tokens per chunk: about 64 MiB of logits (and as much again for their gradient)."""
    return max(1, min(num_tokens, (64 << 20) // max(1, vocab * element_size)))


def _chunks(num_tokens: int, chunk_size: int):
    for start in range(0, num_tokens, chunk_size):
        yield start, min(num_tokens, start + chunk_size)


class _Gradients:
    """dX, dW and db of the linear layer, filled chunk by chunk from the logits' gradient
    (weight and bias in float32 for half-precision inputs). The chunk loop of the vocabulary-
    parallel variant (logitops.distributed) uses it; the single-device op does the same in C++
    (csrc/linear_cross_entropy.cpp)."""

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
        torch.mm(grad, linear_weight, out=self.input[start:end])
        if grad.dtype == self.acc:
            self.weight.addmm_(grad.t(), x)
        elif grad.is_cuda:
            # cuBLAS multiplies half-precision operands into the float32 accumulator directly.
            torch.addmm(self.weight, grad.t(), x, out_dtype=self.acc, out=self.weight)
        else:
            # A half-precision CPU matmul accumulates in float32 and rounds once per chunk; twice
            # as fast as upcasting both operands, and the sum over chunks stays in float32.
            self.weight += grad.t() @ x
        if self.bias is not None:
            self.bias += grad.sum(0, dtype=self.acc)


def check_linear_arguments(input: Tensor, linear_weight: Tensor, linear_bias: Tensor | None):
    """input [..., H], linear_weight [V, H] and linear_bias [V], floating, on one device (V is a
    rank's slice in the vocabulary-parallel variant)."""
    check_floating("input", input)
    check_floating("linear_weight", linear_weight)
    check_same_device("linear_weight", linear_weight, input)
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
    from .ops._common import reduction_code

    reduction_code(reduction)
    check_linear_arguments(input, linear_weight, linear_bias)
    check_same_device("target", target, input)
    if target.is_floating_point() or target.dtype == torch.bool or target.shape != input.shape[:-1]:
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
    if x.device.type != "cpu" and validate_cuda_targets_enabled():
        from .functional import _check_target_range

        _check_target_range(t, vocab, ignore_index)
    code = reduction_code(reduction)
    needs_grad = torch.is_grad_enabled() and any(
        v is not None and v.requires_grad for v in (input, linear_weight, linear_bias)
    )
    out = _ops.linear_cross_entropy_forward(
        x,
        linear_weight.to(x.dtype),
        None if linear_bias is None else linear_bias.to(x.dtype),
        t,
        weight,
        int(ignore_index),
        float(label_smoothing),
        float(z_loss),
        0.0 if softcap is None else float(softcap),
        code,
        int(chunk_size),
        needs_grad and code != 0,
    )[0]
    return out.reshape(lead) if reduction == "none" else out
