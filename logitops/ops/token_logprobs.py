"""Typed wrappers, fake kernels and autograd of the per-token log-probability ops, and their
differentiable ATen composite (for double backward and torch.func transforms)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _composite
from ._common import accumulation_dtype, register_differentiable

__all__ = [
    "token_logprobs_backward",
    "token_logprobs_composite",
    "token_logprobs_forward",
]


def token_logprobs_forward(
    logits: Tensor, target: Tensor, temperature: float, ignore_index: int, return_entropy: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(logprob [N], entropy [N] or [0], lse [N]) of softmax(logits / temperature), in the
    accumulation dtype; rows whose target is ``ignore_index`` give 0 for all three."""
    return _token_logprobs_forward(logits, target, temperature, ignore_index, return_entropy)


def token_logprobs_backward(
    grad_logprob: Tensor | None,
    grad_entropy: Tensor | None,
    logits: Tensor,
    target: Tensor,
    lse: Tensor,
    entropy: Tensor,
    temperature: float,
    ignore_index: int,
) -> Tensor:
    """d (grad_logprob . logprob + grad_entropy . entropy) / d logits, from the forward's lse and
    entropy (``entropy`` is read only when ``grad_entropy`` is given)."""
    return torch.ops.logitops.token_logprobs_backward.default(
        grad_logprob, grad_entropy, logits, target, lse, entropy, temperature, ignore_index
    )


def token_logprobs_composite(
    logits: Tensor, target: Tensor, temperature: float, ignore_index: int, return_entropy: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The forward op's outputs as differentiable ATen ops, with its semantics (ignored rows 0,
    a target out of range NaN, a p of 0 adding 0 to the entropy), materializing the
    log-softmax: for higher-order autograd, forward-mode AD and torch.func transforms."""
    acc = accumulation_dtype(logits.dtype)
    z = logits.to(acc) / temperature
    lse = torch.logsumexp(z, dim=-1)
    log_p = z - lse.unsqueeze(-1)
    valid = target != ignore_index
    in_range = (target >= 0) & (target < logits.shape[-1])
    safe_target = torch.where(valid & in_range, target, torch.zeros_like(target))
    zero = torch.zeros_like(lse)
    nan = torch.full_like(lse, math.nan)

    def row_values(values: Tensor) -> Tensor:
        return torch.where(valid & ~in_range, nan, torch.where(valid, values, zero))

    logprob = row_values(log_p.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1))
    if return_entropy:
        p = log_p.exp()
        # log p replaced by 0 where p = 0, so neither the value nor its gradient is 0 * -inf.
        safe_log_p = torch.where(p > 0, log_p, torch.zeros_like(log_p))
        entropy = row_values(-(p * safe_log_p).sum(-1))
    else:
        entropy = lse.new_empty((0,))
    return logprob, entropy, torch.where(valid, lse, zero).detach()


@torch.library.register_fake("logitops::token_logprobs_forward")
def _forward_fake(logits, target, temperature, ignore_index, return_entropy):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    torch._check(target.shape == logits.shape[:1], lambda: "target must be [rows]")
    rows = logits.shape[0]
    acc = accumulation_dtype(logits.dtype)
    return (
        logits.new_empty((rows,), dtype=acc),
        logits.new_empty((rows if return_entropy else 0,), dtype=acc),
        logits.new_empty((rows,), dtype=acc),
    )


@torch.library.register_fake("logitops::token_logprobs_backward")
def _backward_fake(
    grad_logprob, grad_entropy, logits, target, lse, entropy, temperature, ignore_index
):
    torch._check(logits.dim() == 2, lambda: "logits must be 2-D")
    return logits.new_empty(logits.shape)


def per_row_grad(grad: Tensor | None, like: Tensor) -> Tensor | None:
    """An upstream gradient as the backward op takes it: None, or contiguous in ``like``'s
    dtype (the accumulation dtype)."""
    if grad is None:
        return None
    return grad.to(like.dtype).contiguous()


def _setup_context(ctx, inputs, output):
    logits, target, temperature, ignore_index, return_entropy = inputs
    _, entropy, lse = output
    ctx.save_for_backward(logits, target, lse, entropy)
    ctx.options = (temperature, ignore_index, return_entropy)
    ctx.mark_non_differentiable(lse)
    if not return_entropy:
        ctx.mark_non_differentiable(entropy)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_logprob, grad_entropy, _grad_lse):
    logits, target, lse, entropy = ctx.saved_tensors
    temperature, ignore_index, return_entropy = ctx.options
    if not return_entropy:
        grad_entropy = None
    if not ctx.needs_input_grad[0] or (grad_logprob is None and grad_entropy is None):
        return (None,) * 5
    if _composite.needs_composite_backward(logits, upstream=(grad_logprob, grad_entropy)):
        # create_graph=True (or batched upstream gradients): the composite's gradient has a graph.
        (grad,) = _composite.recompute_vjp(
            lambda: token_logprobs_composite(
                logits, target, temperature, ignore_index, return_entropy
            )[:2],
            (logits,),
            (grad_logprob, grad_entropy),
        )
    else:
        grad = token_logprobs_backward(
            per_row_grad(grad_logprob, lse),
            per_row_grad(grad_entropy, lse),
            logits,
            target,
            lse,
            entropy,
            temperature,
            ignore_index,
        )
    return (grad,) + (None,) * 4


_token_logprobs_forward = register_differentiable(
    "logitops::token_logprobs_forward", _backward, _setup_context
)


def linear_token_logprobs_composite(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Tensor | None,
    target: Tensor,
    temperature: float,
    ignore_index: int,
    return_entropy: bool,
    float32_logits: bool = False,
) -> tuple[Tensor, Tensor]:
    """(logprob, entropy) of :class:`LinearTokenLogprobs` as differentiable ATen ops, the
    [N, V] logits materialized (double backward, forward-mode AD, torch.func transforms)."""
    logits = torch.nn.functional.linear(input, linear_weight, linear_bias)
    if float32_logits:
        logits = logits.float()
    logprob, entropy, _ = token_logprobs_composite(
        logits, target, temperature, ignore_index, return_entropy
    )
    return logprob, entropy


def _linear_chunk(x: Tensor, w: Tensor, b: Tensor | None, float32_logits: bool) -> Tensor:
    logits = torch.nn.functional.linear(x, w, b)
    return logits.float() if float32_logits else logits


class LinearTokenLogprobs(torch.autograd.Function):
    """logprob, entropy and lse of ``linear(input, weight, bias)`` in chunks of ``chunk_size``
    rows: per chunk one matmul and the token_logprobs_forward kernel; the backward recomputes
    each chunk's logits, runs token_logprobs_backward on them and accumulates the input's,
    weight's and bias's gradients (weight and bias in float32 for half-precision inputs). Only
    one chunk's logits (and their gradient) exist at a time. ``float32_logits``: each chunk's
    logits are converted to float32 first (autocast)."""

    @staticmethod
    def forward(
        input: Tensor,
        linear_weight: Tensor,
        linear_bias: Tensor | None,
        target: Tensor,
        temperature: float,
        ignore_index: int,
        return_entropy: bool,
        chunk_size: int,
        float32_logits: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        rows = input.shape[0]
        parts = [
            token_logprobs_forward(
                _linear_chunk(input[start : start + chunk_size], linear_weight, linear_bias,
                              float32_logits),
                target[start : start + chunk_size],
                temperature,
                ignore_index,
                return_entropy,
            )
            for start in range(0, rows, chunk_size)
        ]  # fmt: skip
        if not parts:  # no rows: the kernel on an empty chunk gives the outputs' dtypes
            parts = [
                token_logprobs_forward(
                    _linear_chunk(input, linear_weight, linear_bias, float32_logits),
                    target,
                    temperature,
                    ignore_index,
                    return_entropy,
                )
            ]
        logprob, entropy, lse = (torch.cat(column) for column in zip(*parts, strict=True))
        return logprob, entropy, lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        (input, linear_weight, linear_bias, target, temperature, ignore_index, return_entropy,
         chunk_size, float32_logits) = inputs  # fmt: skip
        _, entropy, lse = output
        ctx.save_for_backward(input, linear_weight, linear_bias, target, lse, entropy)
        ctx.options = (temperature, ignore_index, return_entropy, chunk_size, float32_logits)
        ctx.mark_non_differentiable(lse)
        if not return_entropy:
            ctx.mark_non_differentiable(entropy)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy, _grad_lse):
        input, linear_weight, linear_bias, target, lse, entropy = ctx.saved_tensors
        temperature, ignore_index, return_entropy, chunk_size, float32_logits = ctx.options
        if not return_entropy:
            grad_entropy = None
        needs = ctx.needs_input_grad
        if grad_logprob is None and grad_entropy is None:
            return (None,) * 9
        # Dynamo traces this backward (an autograd.Function's), and cannot trace the probe for
        # batched gradients; a compiled graph has neither create_graph nor batched gradients.
        if not torch.compiler.is_compiling() and _composite.needs_composite_backward(
            input, linear_weight, linear_bias, upstream=(grad_logprob, grad_entropy)
        ):
            grads = _composite.recompute_vjp(
                lambda: linear_token_logprobs_composite(
                    input, linear_weight, linear_bias, target, temperature, ignore_index,
                    return_entropy, float32_logits,
                ),
                (input, linear_weight, linear_bias),
                (grad_logprob, grad_entropy),
            )  # fmt: skip
            return (*grads,) + (None,) * 6
        grad_logprob = per_row_grad(grad_logprob, lse)
        grad_entropy = per_row_grad(grad_entropy, lse)
        acc = accumulation_dtype(input.dtype)
        grad_input = torch.empty_like(input) if needs[0] else None
        grad_weight = (
            torch.zeros(linear_weight.shape, dtype=acc, device=input.device) if needs[1] else None
        )
        with_bias = linear_bias is not None and needs[2]
        grad_bias = (
            torch.zeros(linear_weight.shape[0], dtype=acc, device=input.device)
            if with_bias
            else None
        )
        for start in range(0, input.shape[0], chunk_size):
            end = min(input.shape[0], start + chunk_size)
            x = input[start:end]
            logits = _linear_chunk(x, linear_weight, linear_bias, float32_logits)
            grad_logits = token_logprobs_backward(
                None if grad_logprob is None else grad_logprob[start:end],
                None if grad_entropy is None else grad_entropy[start:end],
                logits,
                target[start:end],
                lse[start:end],
                entropy[start:end] if grad_entropy is not None else entropy,
                temperature,
                ignore_index,
            ).to(input.dtype)
            if grad_input is not None:
                grad_input[start:end] = grad_logits @ linear_weight
            if needs[1]:
                if grad_logits.dtype == acc:
                    grad_weight.addmm_(grad_logits.t(), x)
                elif grad_logits.is_cuda:
                    # cuBLAS multiplies half-precision operands into the float32 accumulator.
                    torch.addmm(grad_weight, grad_logits.t(), x, out_dtype=acc, out=grad_weight)
                else:
                    # A half-precision CPU matmul accumulates in float32 and rounds once per
                    # chunk; the sum over chunks stays in float32 (as _chunking.LinearGradients).
                    grad_weight += grad_logits.t() @ x
            if with_bias:
                grad_bias += grad_logits.sum(0, dtype=acc)
        return (
            grad_input,
            grad_weight.to(linear_weight.dtype) if needs[1] else None,
            grad_bias.to(linear_bias.dtype) if with_bias else None,
        ) + (None,) * 6
