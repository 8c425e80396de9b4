"""Per-token log-probabilities and entropies of sampled tokens, for RL fine-tuning (GRPO / PPO):
``token_logprobs`` from logits in one fused pass, ``linear_token_logprobs`` from hidden states and
the LM head without the [N, V] logits (ops.token_logprobs)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._chunking import default_chunk_size
from .._validation import (
    check_floating,
    check_linear_arguments,
    check_same_device,
    check_target_range,
    is_finite,
    validate_cuda_targets_enabled,
)
from ..ops import _composite
from ..ops import token_logprobs as _tl_ops
from ..ops._common import runs_cpu_kernels
from ..ops.linear_cross_entropy import autocast_disabled
from .linear_cross_entropy import _autocast_dtype

__all__ = ["linear_token_logprobs", "token_logprobs"]


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(
            f"temperature must be a Python number > 0, got {type(temperature).__name__}"
        )
    if not (is_finite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return float(temperature)


def _check_target(target: Tensor, lead: torch.Size, reference: Tensor) -> Tensor:
    """Integer token ids of shape ``lead`` on ``reference``'s device, flattened to int64."""
    if (
        not isinstance(target, torch.Tensor)
        or target.is_floating_point()
        or target.is_complex()
        or target.dtype == torch.bool
    ):
        raise TypeError("target must be an integer tensor of token ids")
    if target.shape != lead:
        raise ValueError(f"target must have shape {tuple(lead)}, got {tuple(target.shape)}")
    check_same_device("target", target, reference)
    return target.reshape(-1).to(torch.int64)


def _check_range(target: Tensor, vocab: int, ignore_index: int, reference: Tensor) -> None:
    if runs_cpu_kernels(reference) or validate_cuda_targets_enabled():
        check_target_range(
            target, vocab, ignore_index, prefix="token_logprobs: ", expected="a token id"
        )


def _outputs(
    logprob: Tensor, entropy: Tensor, lead: torch.Size, return_entropy: bool
) -> Tensor | tuple[Tensor, Tensor]:
    if return_entropy:
        return logprob.reshape(lead), entropy.reshape(lead)
    return logprob.reshape(lead)


def token_logprobs(
    logits: Tensor,
    target: Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Log-probabilities of the ``target`` tokens under ``softmax(logits / temperature)`` (and
    the entropies of those distributions), in one fused pass over the logits.

    With z = logits / T and lse = log sum_j exp(z_j), per row (all leading dimensions):
    ``logprob = z_target - lse`` and ``entropy = -sum_j p_j log p_j`` with p = softmax(z) (a
    token of probability 0, such as a ``-inf`` logit, adds 0). That is
    ``log_softmax(logits / T).gather(-1, target)`` and the entropy of ``softmax(logits / T)``,
    without the [N, V] log-probabilities and their gradient as intermediates. Rows whose target
    is ``ignore_index`` (padding, prompt tokens) give logprob 0 and entropy 0, and no gradient.

    Differentiable with respect to ``logits``: the backward reads the logits once more and
    writes ``(a [j == y] - p_j (a + b (log p_j + H))) / T`` for the upstream gradients a of the
    log-probability and b of the entropy. Double backward, ``torch.func`` transforms and
    forward-mode AD run through differentiable ATen ops with the same semantics.

    Parameters
    ----------
    logits : Tensor
        [..., V], float32 / float64 / bfloat16 / float16, any strides.
    target : Tensor
        Integer token ids [...] (the logits' leading shape), in [0, V) or ``ignore_index``.
    temperature : float
        T > 0 (a Python number); the softmax is of ``logits / T``.
    return_entropy : bool
        Also return the entropies.
    ignore_index : int
        Rows whose target equals it give 0.

    Returns
    -------
    Tensor or (Tensor, Tensor)
        ``logprob`` [...] (and ``entropy`` [...]), in float32 (float64 for float64 logits)
        whatever the logits' dtype: ratios ``exp(logprob - old_logprob)`` need those digits.
        A row containing NaN or +inf, or whose logits are all -inf, gives NaN.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    >>> target = torch.tensor([0, 2])
    >>> logprob, entropy = logitops.token_logprobs(logits, target, return_entropy=True)
    >>> reference = torch.log_softmax(logits, -1).gather(-1, target[:, None]).squeeze(-1)
    >>> torch.allclose(logprob, reference)
    True
    >>> round(entropy[1].item(), 4)  # log 3 for a uniform row
    1.0986
    >>> (logprob.sum() + 0.01 * entropy.sum()).backward()
    >>> logits.grad.shape
    torch.Size([2, 3])
    >>> target[1] = -100  # ignored
    >>> logitops.token_logprobs(logits, target, temperature=0.7)[1].item()
    0.0
    """
    check_floating("logits", logits)
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError("logits must be [..., vocab] with a non-empty vocabulary")
    temperature = _check_temperature(temperature)
    ignore_index = int(ignore_index)
    return_entropy = bool(return_entropy)
    vocab, lead = logits.shape[-1], logits.shape[:-1]
    t = _check_target(target, lead, logits)
    _check_range(t, vocab, ignore_index, logits)
    z = logits.reshape(-1, vocab)
    if _composite.transforms_active(logits):
        logprob, entropy, _ = _tl_ops.token_logprobs_composite(
            z, t, temperature, ignore_index, return_entropy
        )
    else:
        logprob, entropy, _ = _tl_ops.token_logprobs_forward(
            z, t, temperature, ignore_index, return_entropy
        )
    return _outputs(logprob, entropy, lead, return_entropy)


def linear_token_logprobs(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r""":func:`token_logprobs` of ``linear(input, linear_weight, linear_bias)`` without ever
    holding the [N, V] logits: chunks of ``chunk_size`` tokens (default: about 64 MiB of logits
    each).

    Per chunk, one matmul gives the chunk's logits and the fused kernel their log-probabilities,
    entropies and log-sum-exps; only those [N] statistics are kept. The backward recomputes
    each chunk's logits (one more matmul), turns them into their gradient with the upstream
    gradients of the log-probability (the policy-ratio term) and of the entropy (the entropy
    bonus), and accumulates the gradients of ``input``, ``linear_weight`` and ``linear_bias``
    (the last two in float32 for half-precision inputs, rounded once). Peak extra memory:
    O(chunk x V + V x H), never O(N x V). Under ``torch.autocast`` the matmuls run in the
    autocast dtype and each chunk's logits are converted to float32, as ``F.linear`` followed by
    a float32 log-softmax. Double backward, ``torch.func`` transforms and forward-mode AD run
    unfused, through differentiable ATen ops.

    Parameters
    ----------
    input : Tensor
        Hidden states [..., H].
    linear_weight : Tensor
        The LM head's weight [V, H], on the input's device.
    target : Tensor
        Integer token ids [...] (the input's leading shape), in [0, V) or ``ignore_index``.
    linear_bias : Tensor, optional
        The LM head's bias [V].
    temperature, return_entropy, ignore_index
        As for :func:`token_logprobs` (ignored rows give 0 and no gradient).
    chunk_size : int, optional
        Tokens per chunk (default: about 64 MiB of logits).

    Returns
    -------
    Tensor or (Tensor, Tensor)
        ``logprob`` [...] (and ``entropy`` [...]), in float32 (float64 for float64 inputs).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> hidden = torch.randn(64, 32, requires_grad=True)
    >>> lm_head = torch.randn(1000, 32, requires_grad=True)
    >>> tokens = torch.randint(0, 1000, (64,))
    >>> logprob, entropy = logitops.linear_token_logprobs(
    ...     hidden, lm_head, tokens, temperature=0.9, return_entropy=True, chunk_size=16
    ... )
    >>> unfused = torch.log_softmax(hidden @ lm_head.T / 0.9, -1)
    >>> torch.allclose(logprob, unfused.gather(-1, tokens[:, None]).squeeze(-1), atol=1e-5)
    True
    >>> (logprob.mean() + 0.01 * entropy.mean()).backward()  # chunk by chunk again
    >>> hidden.grad.shape, lm_head.grad.shape
    (torch.Size([64, 32]), torch.Size([1000, 32]))
    """
    check_linear_arguments(input, linear_weight, linear_bias)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    temperature = _check_temperature(temperature)
    ignore_index = int(ignore_index)
    return_entropy = bool(return_entropy)
    vocab, lead = linear_weight.shape[0], input.shape[:-1]
    if vocab == 0:
        raise ValueError("linear_weight must have at least one row (a non-empty vocabulary)")
    t = _check_target(target, lead, input)
    _check_range(t, vocab, ignore_index, input)
    # Autocast: the matmuls in the autocast dtype, the log-softmax in float32 (F.linear, then a
    # float32 op).
    cast = _autocast_dtype(input)
    dtype = input.dtype if cast is None else cast
    x = input.reshape(-1, input.shape[-1]).to(dtype)
    w = linear_weight.to(dtype)
    b = None if linear_bias is None else linear_bias.to(dtype)
    with autocast_disabled(x.device.type):
        if _composite.transforms_active(input, linear_weight, linear_bias):
            logprob, entropy = _tl_ops.linear_token_logprobs_composite(
                x, w, b, t, temperature, ignore_index, return_entropy, cast is not None
            )
        else:
            if chunk_size is None:
                chunk_size = default_chunk_size(
                    x.shape[0], vocab, 4 if cast is not None else x.element_size()
                )
            logprob, entropy, _ = _tl_ops.LinearTokenLogprobs.apply(
                x, w, b, t, temperature, ignore_index, return_entropy, int(chunk_size),
                cast is not None,
            )  # fmt: skip
    return _outputs(logprob, entropy, lead, return_entropy)
