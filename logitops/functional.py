"""PyTorch-style functions. Signatures match `torch.nn.functional`; extras are keyword-only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import _reduction as _Reduction

from ._linear_cross_entropy import default_chunk_size
from ._sampling import filter_logits, sample
from ._validation import (
    check_cross_entropy_options,
    check_floating,
    check_linear_arguments,
    check_same_device,
    check_target_range,
    is_finite,
    validate_cuda_targets_enabled,
)
from .ops import _composite
from .ops import bce_with_logits as _bce_ops
from .ops import cross_entropy as _ce_ops
from .ops import distillation as _distill_ops
from .ops import linear_cross_entropy as _lce_ops
from .ops._common import accumulation_dtype, reduction_code, runs_cpu_kernels

__all__ = [
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "distillation_loss",
    "filter_logits",
    "kl_div_with_logits",
    "linear_cross_entropy",
    "min_p_filter",
    "sample",
    "top_k_filter",
    "top_p_filter",
]


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
    Tensor, or (Tensor, Tensor) with ``return_lse``.

    Examples
    --------
    >>> logits = torch.randn(8, 32000, requires_grad=True)
    >>> target = torch.randint(0, 32000, (8,))
    >>> loss = logitops.functional.cross_entropy(logits, target, label_smoothing=0.1)
    >>> loss.backward()
    """
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    code = reduction_code(reduction)
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
        options = (weight, float(label_smoothing), float(z_loss), cap, code)
        if _composite.transforms_active(input, target, weight):
            loss, lse = _composite.cross_entropy_probs(logits_2d, probs_2d, *options)
        else:
            loss, lse, _ = _ce_ops.cross_entropy_probs_forward(
                logits_2d, probs_2d, *options, _fuse_gradient(input)
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
        target_1d = target.reshape(-1).to(torch.int64)
        if not runs_cpu_kernels(input) and validate_cuda_targets_enabled():
            check_target_range(target_1d, num_classes, ignore_index)
        options = (weight, int(ignore_index), float(label_smoothing), float(z_loss), cap, code)
        if _composite.transforms_active(input, weight):
            loss, lse = _composite.cross_entropy(logits_2d, target_1d, *options)
        else:
            loss, lse, _, _ = _ce_ops.cross_entropy_forward(
                logits_2d, target_1d, *options, _fuse_gradient(input)
            )

    out_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    if code == 0:
        loss = loss.reshape(out_shape)
    if return_lse:
        return loss, lse.reshape(out_shape)
    return loss


def _fuse_gradient(input: Tensor) -> bool:
    """Whether the forward should also write the gradient (read the logits once): when one will
    be needed, on the CPU. On CUDA the backward recomputes it from the saved lse instead, because
    skipping the multiplication by the upstream gradient there would need a host sync."""
    return input.requires_grad and torch.is_grad_enabled() and runs_cpu_kernels(input)


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
    pos_weight : Tensor, optional
        Weight of positive examples, broadcast along the last (class) dimension.
    reduction : {"mean", "sum", "none"}

    Examples
    --------
    >>> logits = torch.randn(4, 8, requires_grad=True)
    >>> labels = torch.randint(0, 2, (4, 8)).float()
    >>> pos_weight = torch.full((8,), 3.0)
    >>> loss = logitops.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
    >>> loss.backward()
    """
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    code = reduction_code(reduction)
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
        code,
    )
    if _composite.transforms_active(input, target, weight, pos_weight):
        loss = _composite.bce_with_logits(*operands)
    else:
        # reduction "none" recomputes in the backward: its upstream gradient is a full tensor.
        loss, _ = _bce_ops.bce_with_logits_forward(*operands, code != 0 and _fuse_gradient(input))
    return loss.reshape(input.shape) if code == 0 else loss


def top_k_filter(
    logits: Tensor,
    k: int | Tensor,
    *,
    filter_value: float = -math.inf,
    min_tokens_to_keep: int = 1,
) -> Tensor:
    """Keeps the k largest logits of each row and every logit tied with the k-th (HF's
    ``TopKLogitsWarper``); ``k >= vocab`` keeps all. See :func:`filter_logits`."""
    return filter_logits(
        logits, top_k=k, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
    )


def top_p_filter(
    logits: Tensor,
    p: float | Tensor,
    *,
    filter_value: float = -math.inf,
    min_tokens_to_keep: int = 1,
) -> Tensor:
    """Nucleus filtering (HF's ``TopPLogitsWarper``): removes the tokens whose ascending
    cumulative probability is <= 1 - p. See :func:`filter_logits`."""
    return filter_logits(
        logits, top_p=p, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
    )


def min_p_filter(
    logits: Tensor,
    min_p: float | Tensor,
    *,
    filter_value: float = -math.inf,
    min_tokens_to_keep: int = 1,
) -> Tensor:
    """Keeps tokens with probability >= min_p times the row's largest (HF's
    ``MinPLogitsWarper``). See :func:`filter_logits`."""
    return filter_logits(
        logits, min_p=min_p, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep
    )


def kl_div_with_logits(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    kind: str = "forward",
    beta: float = 0.5,
    ignore_index: int = -100,
    target: Tensor | None = None,
    reduction: str = "batchmean",
) -> Tensor:
    r"""Divergence between the teacher's and the student's softmax at temperature T, fused: one
    kernel reads both logit rows and writes the student's gradient; the teacher gets none.

    With P = softmax(teacher / T) and Q = softmax(student / T), per row:

    - ``kind="forward"``: KL(P || Q) = sum P (log P - log Q) (what ``F.kl_div(log Q, P)`` gives);
    - ``kind="reverse"``: KL(Q || P);
    - ``kind="jsd"``: beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q, with
      log M computed in log space; beta = 0 and beta = 1 are exactly the forward and reverse KL.

    Rows (all leading dimensions flattened) whose ``target`` equals ``ignore_index`` add nothing
    and are not counted. ``reduction``: ``"batchmean"`` (the sum divided by the number of
    counted rows: ``KLDivLoss``'s batchmean for 2-D input; torch divides by ``input.size(0)``,
    i.e. by V for 1-D and by B for [B, T, V] input), ``"sum"`` or ``"none"`` (per row). No T^2
    factor here: see :func:`distillation_loss`.

    Examples
    --------
    >>> student = torch.randn(8, 1000, requires_grad=True)
    >>> teacher = torch.randn(8, 1000)
    >>> logitops.functional.kl_div_with_logits(student, teacher, temperature=2.0).backward()
    """
    check_floating("student_logits", student_logits)
    check_floating("teacher_logits", teacher_logits)
    check_same_device("teacher_logits", teacher_logits, student_logits)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits must have the student's shape {tuple(student_logits.shape)}, got "
            f"{tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() == 0 or student_logits.shape[-1] == 0:
        raise ValueError("student_logits must be [..., vocab] with a non-empty vocabulary")
    if not (is_finite(temperature) and float(temperature) > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if kind not in _distill_ops.KIND_CODES:
        raise ValueError(f"kind must be 'forward', 'reverse' or 'jsd', got {kind!r}")
    if not (0.0 <= float(beta) <= 1.0):
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if reduction not in _distill_ops.DISTILL_REDUCTIONS:
        raise ValueError(f"reduction must be 'batchmean', 'sum' or 'none', got {reduction!r}")
    if kind == "jsd" and float(beta) in (0.0, 1.0):
        kind = "forward" if float(beta) == 0.0 else "reverse"
    vocab = student_logits.shape[-1]
    lead = student_logits.shape[:-1]
    target_1d = None
    if target is not None:
        if not isinstance(target, torch.Tensor) or target.is_floating_point():
            raise TypeError("target must be an integer tensor of class indices (or None)")
        if target.shape != lead:
            raise ValueError(f"target must have shape {tuple(lead)}, got {tuple(target.shape)}")
        check_same_device("target", target, student_logits)
        target_1d = target.reshape(-1).to(torch.int64)
    student_2d = student_logits.reshape(-1, vocab)
    code = _distill_ops.DISTILL_REDUCTIONS[reduction]
    operands = (
        student_2d,
        teacher_logits.detach().reshape(-1, vocab).to(student_logits.dtype),
        target_1d,
        int(ignore_index),
        float(temperature),
        _distill_ops.KIND_CODES[kind],
        float(beta),
        code,
    )
    if _composite.transforms_active(student_logits):
        loss = _composite.kl_div_logits(*operands)
    else:
        loss, _, _ = _distill_ops.kl_div_logits_forward(*operands, _fuse_gradient(student_logits))
    return loss.reshape(lead) if code == 0 else loss


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    kind: str = "forward",
    beta: float = 0.5,
    ignore_index: int = -100,
) -> Tensor:
    r"""Knowledge distillation (Hinton, Vinyals and Dean 2015):

    ``alpha * cross_entropy(student, target) + (1 - alpha) * T**2 * kl_div_with_logits(student,
    teacher, temperature=T)``

    The cross-entropy is at temperature 1 over the non-ignored targets (mean); the soft term is
    the divergence at temperature T (batchmean over the rows whose target is not ignored) times
    T**2, which keeps its gradients the same size as T changes. Without ``target``, the soft term
    alone: ``T**2 * kl_div_with_logits(...)`` over every row.

    Examples
    --------
    >>> student = torch.randn(8, 100, requires_grad=True)
    >>> loss = logitops.functional.distillation_loss(student, torch.randn(8, 100),
    ...                                              torch.randint(0, 100, (8,)))
    """
    if not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = kl_div_with_logits(
        student_logits,
        teacher_logits,
        temperature=temperature,
        kind=kind,
        beta=beta,
        ignore_index=ignore_index,
        target=target,
    )
    soft = soft * (float(temperature) ** 2)
    if target is None:
        return soft
    vocab = student_logits.shape[-1]
    hard = cross_entropy(
        student_logits.reshape(-1, vocab), target.reshape(-1), ignore_index=ignore_index
    )
    return alpha * hard + (1 - alpha) * soft


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

    Examples
    --------
    >>> hidden = torch.randn(1024, 256, requires_grad=True)
    >>> lm_head = torch.randn(32000, 256, requires_grad=True)
    >>> loss = logitops.linear_cross_entropy(hidden, lm_head, torch.randint(0, 32000, (1024,)))
    >>> loss.backward()
    """
    code = reduction_code(reduction)
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
                logits, t, weight, ignore_index, float(label_smoothing), float(z_loss), cap, code
            )
        return out.reshape(lead) if code == 0 else out
    if chunk_size is None:
        # under autocast each chunk's logits are also held in float32
        chunk_size = default_chunk_size(
            x.shape[0], vocab, 4 if cast is not None else x.element_size()
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
            code,
            int(chunk_size),
            needs_grad and code != 0,
            float32_logits=cast is not None,
        )[0]
    # The op's loss is in the accumulation dtype: float32 under autocast, as its cross-entropy.
    out = out.to(input.dtype if cast is None else torch.float32)
    return out.reshape(lead) if code == 0 else out


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
