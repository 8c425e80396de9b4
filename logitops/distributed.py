"""Cross-entropy over a vocabulary sharded across the ranks of a process group (tensor parallelism).

Each rank holds the logits (or the LM-head weight) of a contiguous slice of the vocabulary; the
targets are global class ids, the same on every rank. Each rank reduces its slice to three numbers
per row with our kernel (its log-sum-exp, the target's logit when the target class is in the slice,
and the sum of its logits, for label smoothing), one all-gather of those [3, N] statistics gives
every rank the global log-sum-exp and the loss, and the backward writes each rank's slice of the
full gradient with no communication. The loss equals the single-process cross-entropy on every
rank; each rank's gradient is its slice of the full one.

Call these on every rank of the group with the same target, options and ``requires_grad`` flags:
they run collectives. Before any data moves, the ranks exchange their slice layout and the outcome
of their argument checks, so a bad argument or an inconsistent layout on one rank raises on every
rank instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._chunking import LinearGradients, chunks, default_chunk_size
from ._validation import (
    FLOATING_DTYPES,
    check_cross_entropy_options,
    check_floating,
    check_linear_arguments,
    check_reduction,
    check_same_device,
    check_target_range,
    validate_cuda_targets_enabled,
)
from .ops import vocab_parallel as _vp_ops
from .ops._common import (
    REDUCTION_NONE,
    REDUCTIONS,
    accumulation_dtype,
    reduce_rows,
    rows_upstream,
    upstream_scale,
)

__all__ = [
    "RowOptions",
    "VocabLayout",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
    "vocab_parallel_rows",
]


@dataclass(frozen=True)
class VocabLayout:
    """Where this rank's slice sits in the vocabulary, agreed by all ranks of the group.

    Parameters
    ----------
    vocab_start : int
        Global id of this rank's first class.
    local_classes : int
        Size of this rank's slice.
    num_classes : int
        The whole vocabulary, over all ranks.
    max_local_classes : int
        The largest slice (chunk sizes derive from it, alike on all ranks).
    world_size : int
        Ranks in the group.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.distributed import VocabLayout
    >>> layout = VocabLayout(16000, 16000, 32000, 16000, world_size=2)  # rank 1 of 2
    >>> layout.vocab_start + layout.local_classes == layout.num_classes
    True
    """

    vocab_start: int  # global id of this rank's first class
    local_classes: int  # size of this rank's slice
    num_classes: int  # the whole vocabulary, over all ranks
    max_local_classes: int  # the largest slice (chunk sizes derive from it, alike on all ranks)
    world_size: int


@dataclass(frozen=True)
class _Options:
    ignore_index: int
    reduction: str
    label_smoothing: float
    z_loss: float


def _collective_device(group: dist.ProcessGroup | None, tensor: Tensor | None) -> torch.device:
    """Where this group's collectives run: NCCL moves only CUDA tensors (the caller's own device,
    so no rank depends on set_device); gloo and the rest take CPU tensors (gloo's all_gather has
    no CUDA path), so CUDA statistics are copied to the host and back there."""
    backend = str(dist.get_backend(group))
    if "nccl" in backend:
        if isinstance(tensor, Tensor) and tensor.is_cuda:
            return tensor.device
        if backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# What every rank of the group must agree on besides the layout: a mismatch would pair
# collectives of different sizes, or leave some ranks waiting in one the others skip.
_MUST_MATCH = {
    "num_rows": "local_logits / input must have the same number of rows on every rank (the "
    "target is the same everywhere)",
    "chunk_size": "chunk_size must be the same on every rank",
    "dtype": "local_logits / input must have the same dtype on every rank",
    "reduction": "reduction must be the same on every rank",
    "needs_grad": "requires_grad of input / linear_weight / linear_bias (and grad mode) must be "
    "the same on every rank",
    "target_kind": "target must be class ids on every rank or probabilities on every rank, and "
    "weight given on every rank or on none",
    "weight_classes": "weight must have the same length on every rank",
}


@dataclass(frozen=True)
class _RankArguments:
    vocab_start: int  # -1: not given
    local_classes: int
    num_rows: int
    chunk_size: int  # 0: not chunked
    dtype: int
    reduction: int  # the index in REDUCTIONS
    needs_grad: int
    target_kind: int = 0  # 0: class ids; 1: class ids with weight; 2: probabilities
    weight_classes: int = -1  # the length of weight (-1: not given)


def _agree_on_layout(
    mine: _RankArguments | None,
    group: dist.ProcessGroup | None,
    tensor: Tensor,
    local_error: Exception | None,
) -> VocabLayout:
    """All-gathers every rank's arguments (or the failure of its checks), and raises on every
    rank when any rank's checks failed, the ranks disagree, or the slices do not tile [0, V)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "logitops.distributed needs torch.distributed initialized: call "
            "torch.distributed.init_process_group first"
        )
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    fields = list(_RankArguments.__dataclass_fields__)
    values = [0] * (1 + len(fields))
    if local_error is None:
        values = [1] + [getattr(mine, f) for f in fields]
    device = _collective_device(group, tensor)
    gathered = [torch.empty(len(values), dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(gathered, torch.tensor(values, dtype=torch.int64, device=device), group=group)
    rows = torch.stack(gathered).tolist()

    if local_error is not None:
        raise local_error
    failed = [r for r, row in enumerate(rows) if row[0] != 1]
    if failed:
        raise RuntimeError(
            f"logitops.distributed: rank(s) {failed} of the group rejected their arguments "
            "(see the exception raised there); nothing was computed"
        )
    ranks = [_RankArguments(*row[1:]) for row in rows]
    for name, message in _MUST_MATCH.items():
        seen = [getattr(a, name) for a in ranks]
        if len(set(seen)) != 1:
            raise ValueError(f"{message}; got {seen} by rank")
    starts = [a.vocab_start for a in ranks]
    sizes = [a.local_classes for a in ranks]
    given = [s != -1 for s in starts]
    if any(given) and not all(given):
        raise ValueError(
            "vocab_start must be given on every rank of the group or on none; ranks "
            f"{[r for r in range(world) if not given[r]]} passed None"
        )
    if not any(given):
        starts = [sum(sizes[:r]) for r in range(world)]
    expected = 0
    for r in sorted(range(world), key=lambda r: (starts[r], sizes[r])):
        if starts[r] != expected:
            raise ValueError(
                "vocab_start: the slices [vocab_start, vocab_start + V_local) of the ranks must "
                f"tile [0, V) without gap or overlap; got (start, size) "
                f"{list(zip(starts, sizes, strict=True))} by rank"
            )
        expected += sizes[r]
    if expected == 0:
        raise ValueError("the vocabulary is empty: every rank holds 0 classes")
    return VocabLayout(starts[rank], sizes[rank], expected, max(sizes), world)


_DTYPE_CODES = {dtype: code for code, dtype in enumerate(FLOATING_DTYPES)}


def _check_common(target: Tensor, lead_shape, reference: Tensor, options: _Options) -> None:
    if not isinstance(target, Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(
            f"target must be a tensor of integer class ids, got "
            f"{getattr(target, 'dtype', type(target).__name__)}"
        )
    if target.shape != lead_shape:
        raise ValueError(
            f"target must have shape {tuple(lead_shape)} (the logits' without the class "
            f"dimension), got {tuple(target.shape)}"
        )
    check_same_device("target", target, reference)
    check_cross_entropy_options(options.label_smoothing, options.z_loss, None)


def _check_target_range(target: Tensor, num_classes: int, ignore_index: int) -> None:
    if target.device.type == "cpu" or validate_cuda_targets_enabled():
        check_target_range(
            target, num_classes, ignore_index, prefix="", expected="a global class id"
        )


def _combine(
    stats: Tensor,
    target: Tensor,
    layout: VocabLayout,
    group: dist.ProcessGroup | None,
    options: _Options,
    acc: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Global lse [N] and per-row loss [N] (in `acc`) from each rank's float64 [3, N] stats: the
    formulas of cross_entropy_row_loss (csrc/common/logit_math.h) without class weights, in
    float64 so that lse - z_target keeps the digits a float32 lse would lose."""
    if layout.world_size > 1:
        device = _collective_device(group, stats)
        parts = [torch.empty_like(stats, device=device) for _ in range(layout.world_size)]
        dist.all_gather(parts, stats.to(device).contiguous(), group=group)
        stacked = torch.stack(parts).to(stats.device)
    else:
        stacked = stats.unsqueeze(0)
    lse = torch.logsumexp(stacked[:, 0], dim=0)
    eps = options.label_smoothing
    loss = (1.0 - eps) * (lse - stacked[:, 1].sum(0))
    if eps != 0.0:  # skipped at 0 so that a -inf logit elsewhere cannot give 0 * inf
        loss = loss + eps * (lse - stacked[:, 2].sum(0) / layout.num_classes)
    if options.z_loss != 0.0:
        loss = loss + options.z_loss * lse * lse
    loss = torch.where(target != options.ignore_index, loss, torch.zeros_like(loss))
    # A target on no rank (unchecked: traced, or LOGITOPS_VALIDATE_TARGETS=0 on CUDA) gives NaN,
    # as the single-device kernels do.
    loss = torch.where(_invalid_targets(target, layout, options), torch.nan, loss)
    return lse.to(acc), loss.to(acc)


def _invalid_targets(target: Tensor, layout: VocabLayout, options: _Options) -> Tensor:
    out_of_range = (target < 0) | (target >= layout.num_classes)
    return out_of_range & (target != options.ignore_index)


def _slice_grad(
    grad_rows: Tensor, logits: Tensor, target: Tensor, lse: Tensor, layout: VocabLayout, options
) -> Tensor:
    """This rank's slice of the gradient of the per-row losses, for per-row upstream gradients;
    NaN on the rows whose target is on no rank."""
    grad_rows = torch.where(_invalid_targets(target, layout, options), torch.nan, grad_rows)
    return _vp_ops.vocab_parallel_cross_entropy_backward(
        grad_rows,
        logits,
        target,
        lse,
        layout.vocab_start,
        layout.num_classes,
        options.ignore_index,
        options.label_smoothing,
        options.z_loss,
    )


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, layout, group, options):
        stats = _vp_ops.vocab_parallel_cross_entropy_stats(logits, target, layout.vocab_start)
        acc = accumulation_dtype(logits.dtype)
        lse, row_loss = _combine(stats, target, layout, group, options, acc)
        count = (target != options.ignore_index).sum()
        ctx.layout, ctx.options = layout, options
        ctx.save_for_backward(logits, target, lse, count)
        return reduce_rows(row_loss, options.reduction, count).to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, target, lse, count = ctx.saved_tensors
        layout, options = ctx.layout, ctx.options
        grad = None
        if ctx.needs_input_grad[0]:
            upstream = rows_upstream(grad_out, options.reduction, count, logits.shape[0], lse.dtype)
            grad = _slice_grad(upstream, logits, target, lse, layout, options)
        return grad, None, None, None, None


def _make_options(ignore_index, reduction, label_smoothing, z_loss) -> _Options:
    return _Options(
        int(ignore_index), check_reduction(reduction), float(label_smoothing), float(z_loss)
    )


def vocab_parallel_cross_entropy(
    local_logits: Tensor,
    target: Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    vocab_start: int | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    weight: Tensor | None = None,
) -> Tensor:
    r"""Cross-entropy of logits whose vocabulary is split across the ranks of ``group``.

    ``local_logits`` [..., V_local] are this rank's columns: the global classes
    ``[vocab_start, vocab_start + V_local)``. By default the slices follow rank order (rank r
    starts where rank r - 1 ends; slices may be unequal); pass ``vocab_start`` on every rank for
    any other arrangement. ``target`` [...] holds global class ids (or ``ignore_index``) and is the
    same on every rank, or is this rank's columns [..., V_local] of class probabilities
    (floating; then ``ignore_index`` must stay -100). ``weight`` [V] holds the class weights of
    the whole vocabulary, the same on every rank. The result, on every rank, is
    ``F.cross_entropy(full_logits, full_target, weight, ignore_index=..., reduction=...,
    label_smoothing=...)`` plus ``z_loss * lse**2`` per row; the gradient of ``local_logits`` is
    this rank's slice of the full gradient (and that of a probability target, its columns).
    Costs two all-gathers (the layout: 10 integers per rank; the statistics: 3 floats per row
    per rank, 4 with class weights), and one host sync for the layout.

    With NCCL the collectives run on the logits' GPU; with gloo on the CPU (CUDA statistics are
    copied to the host and back: [3, N] floats per call).

    Parameters
    ----------
    local_logits : Tensor
        This rank's columns [..., V_local] of the logits.
    target : Tensor
        Global class ids [...], the same on every rank; or this rank's columns [..., V_local] of
        class probabilities.
    group : torch.distributed.ProcessGroup, optional
        The ranks that share the vocabulary (default: the default group).
    vocab_start : int, optional
        Global id of this rank's first class (default: the slices in rank order).
    ignore_index, reduction, label_smoothing
        As in :func:`torch.nn.functional.cross_entropy`.
    z_loss : float
        As in :func:`logitops.cross_entropy`.
    weight : Tensor, optional
        Class weights [V] of the whole vocabulary, the same on every rank.

    Returns
    -------
    Tensor
        The loss of the full logits, the same on every rank: 0-dim, or the target's shape for
        ``reduction="none"``.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> import torch.distributed as dist
    >>> from logitops.distributed import vocab_parallel_cross_entropy
    >>> # Every rank runs this; here the group has one rank, which holds the whole vocabulary.
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> logits, target = torch.randn(8, 1000), torch.randint(0, 1000, (8,))
    >>> rank, world = dist.get_rank(), dist.get_world_size()
    >>> local = logits[:, rank * 1000 // world : (rank + 1) * 1000 // world].requires_grad_()
    >>> loss = vocab_parallel_cross_entropy(local, target)
    >>> torch.allclose(loss, torch.nn.functional.cross_entropy(logits, target))
    True
    >>> loss.backward()  # local.grad: this rank's columns of the full gradient
    >>> dist.destroy_process_group()
    """
    options = None
    error, num_rows, local_classes = None, 0, 0
    try:
        options = _make_options(ignore_index, reduction, label_smoothing, z_loss)
        check_floating("local_logits", local_logits)
        if local_logits.dim() < 1:
            raise ValueError("local_logits must have a class dimension, got a 0-dim tensor")
        probs = isinstance(target, Tensor) and target.is_floating_point()
        if probs:
            _check_probability_target(target, local_logits, options)
        else:
            _check_common(target, local_logits.shape[:-1], local_logits, options)
        if weight is not None:
            check_floating("weight", weight)
            check_same_device("weight", weight, local_logits)
            if weight.dim() != 1:
                raise ValueError(
                    f"weight must be the 1-D class weights [V] of the whole vocabulary, got "
                    f"shape {tuple(weight.shape)}"
                )
        if vocab_start is not None and (not isinstance(vocab_start, int) or vocab_start < 0):
            raise ValueError(f"vocab_start must be None or an int >= 0, got {vocab_start!r}")
        local_classes = local_logits.shape[-1]
        num_rows = math.prod(local_logits.shape[:-1])
        mine = _RankArguments(
            -1 if vocab_start is None else vocab_start,
            local_classes,
            num_rows,
            0,
            _DTYPE_CODES[local_logits.dtype],
            REDUCTIONS.index(options.reduction),
            0,  # the backward needs no collective
            2 if probs else int(weight is not None),
            -1 if weight is None else weight.shape[0],
        )
    except (TypeError, ValueError) as exc:
        error, mine = exc, None
    layout = _agree_on_layout(mine, group, local_logits, error)
    if probs or weight is not None:
        return _weighted_or_probabilities(local_logits, target, weight, layout, group, options)
    logits_2d = local_logits.reshape(num_rows, local_classes)
    target_1d = target.reshape(-1).to(torch.int64)
    # Every rank holds the same targets, so every rank raises alike.
    _check_target_range(target_1d, layout.num_classes, options.ignore_index)
    out = _VocabParallelCrossEntropy.apply(logits_2d, target_1d, layout, group, options)
    return out.reshape(target.shape) if options.reduction == REDUCTION_NONE else out


def _check_probability_target(target: Tensor, local_logits: Tensor, options: _Options) -> None:
    if target.shape != local_logits.shape:
        raise ValueError(
            f"target of dtype {target.dtype} is read as this rank's columns of class "
            f"probabilities and must have local_logits' shape {tuple(local_logits.shape)}, got "
            f"{tuple(target.shape)}"
        )
    check_floating("target", target)
    check_same_device("target", target, local_logits)
    if options.ignore_index != -100:
        raise ValueError(
            "ignore_index is not supported for floating point target (class-probability "
            f"targets), got ignore_index={options.ignore_index}"
        )
    check_cross_entropy_options(options.label_smoothing, options.z_loss, None)


def _weighted_or_probabilities(local_logits, target, weight, layout, group, options) -> Tensor:
    """vocab_parallel_cross_entropy with class weights or probability targets: the per-row
    losses of vocab_parallel_rows, reduced here."""
    if weight is not None and weight.shape[0] != layout.num_classes:
        # Every rank has the same weight length and vocabulary: every rank raises alike.
        raise ValueError(
            f"weight must have {layout.num_classes} class weights (the whole vocabulary), got "
            f"{weight.shape[0]}"
        )
    lead = local_logits.shape[:-1]
    num_rows = math.prod(lead)  # not -1: an empty slice leaves it ambiguous
    logits_2d = local_logits.reshape(num_rows, layout.local_classes)
    acc = accumulation_dtype(local_logits.dtype)
    if target.is_floating_point():
        t = target.reshape(num_rows, layout.local_classes).to(local_logits.dtype)
        denominator = torch.tensor(float(logits_2d.shape[0]), dtype=acc)
    else:
        t = target.reshape(-1).to(torch.int64)
        _check_target_range(t, layout.num_classes, options.ignore_index)
    if weight is not None:
        weight = weight.detach()
    rows, _ = vocab_parallel_rows(
        logits_2d,
        t,
        layout,
        RowOptions(options.ignore_index, options.label_smoothing, options.z_loss),
        weight=weight,
        group=group,
    )
    if options.reduction == REDUCTION_NONE:
        return rows.reshape(lead).to(local_logits.dtype)
    total = rows.sum()
    if options.reduction == "mean":
        if not target.is_floating_point():
            keep = t != options.ignore_index
            safe = torch.where(keep, t, torch.zeros_like(t)).clamp(0, layout.num_classes - 1)
            w = torch.ones_like(rows) if weight is None else weight.to(acc)[safe]
            denominator = torch.where(keep, w, torch.zeros_like(w)).sum()
        denominator = denominator.to(total.device)
        # A mean over nothing is NaN and its gradient 0, as cross_entropy's.
        scale = torch.where(denominator != 0, 1.0 / denominator, torch.zeros_like(denominator))
        total = total * scale + torch.where(denominator != 0, 0.0, torch.nan).to(acc)
    return total.to(local_logits.dtype)


def _all_reduce_sum(tensor: Tensor, layout: VocabLayout, group: dist.ProcessGroup | None) -> Tensor:
    """Sum over the ranks, in float32 for half-precision tensors."""
    if layout.world_size == 1:
        return tensor
    device = _collective_device(group, tensor)
    acc = tensor.to(device=device, dtype=accumulation_dtype(tensor.dtype))
    dist.all_reduce(acc, op=dist.ReduceOp.SUM, group=group)
    return acc.to(device=tensor.device, dtype=tensor.dtype)


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, target, layout, group, options, chunk_size, needs_grad):
        reduction = options.reduction
        num_rows = input.shape[0]
        acc = accumulation_dtype(input.dtype)
        needs_grad = needs_grad and reduction != REDUCTION_NONE
        grads = LinearGradients(input, weight, bias is not None) if needs_grad else None
        row_losses, lses = [], []
        for start, end in chunks(num_rows, chunk_size):
            x, t = input[start:end], target[start:end]
            logits = F.linear(x, weight, bias)
            stats = _vp_ops.vocab_parallel_cross_entropy_stats(logits, t, layout.vocab_start)
            lse, row_loss = _combine(stats, t, layout, group, options, acc)
            row_losses.append(row_loss)
            lses.append(lse)
            if needs_grad:
                # The gradient of the summed loss; backward() scales it by the upstream gradient.
                ones = torch.ones(end - start, dtype=acc, device=input.device)
                grad = _slice_grad(ones, logits, t, lse, layout, options)
                grads.add(start, end, x, weight, grad)
            del logits
        row_loss = torch.cat(row_losses) if row_losses else input.new_zeros((0,), dtype=acc)
        lse = torch.cat(lses) if lses else input.new_zeros((0,), dtype=acc)
        count = (target != options.ignore_index).sum()
        if needs_grad:
            # The input is the same on every rank: its gradient sums every slice's share.
            grads.input = _all_reduce_sum(grads.input, layout, group)
        ctx.layout, ctx.options, ctx.chunk_size, ctx.group = layout, options, chunk_size, group
        saved = (grads.input, grads.weight, grads.bias) if grads is not None else (None,) * 3
        ctx.save_for_backward(input, weight, bias, target, lse, count, *saved)
        return reduce_rows(row_loss, reduction, count).to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        input, weight, bias, target, lse, count, grad_input, grad_weight, grad_bias = (
            ctx.saved_tensors
        )
        layout, options = ctx.layout, ctx.options
        if options.reduction == REDUCTION_NONE:
            upstream = rows_upstream(grad_out, REDUCTION_NONE, count, input.shape[0], lse.dtype)
            grads = LinearGradients(input, weight, bias is not None)
            for start, end in chunks(input.shape[0], ctx.chunk_size):
                x, t = input[start:end], target[start:end]
                logits = F.linear(x, weight, bias)
                grad = _slice_grad(upstream[start:end], logits, t, lse[start:end], layout, options)
                grads.add(start, end, x, weight, grad)
            grad_input = _all_reduce_sum(grads.input, layout, ctx.group)
            grad_weight, grad_bias = grads.weight, grads.bias
        else:
            # A mean over no row is NaN; its gradient is 0, as cross_entropy's.
            scale = upstream_scale(grad_out, options.reduction, count, grad_weight.dtype)
            # In float32: 1 / count rounded to fp16 is subnormal past 16384 rows.
            grad_input = (grad_input.to(scale.dtype) * scale).to(grad_input.dtype)
            grad_weight = grad_weight * scale
            grad_bias = grad_bias * scale if grad_bias is not None else None
        return (
            grad_input if ctx.needs_input_grad[0] else None,
            grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None,
            grad_bias.to(bias.dtype) if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def vocab_parallel_linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    group: dist.ProcessGroup | None = None,
    vocab_start: int | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    chunk_size: int | None = None,
) -> Tensor:
    r"""``vocab_parallel_cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` for a
    vocabulary-sharded LM head, without the [N, V_local] logits: chunks of ``chunk_size`` tokens,
    as :func:`logitops.linear_cross_entropy`.

    ``input`` [..., H] is the same on every rank; ``linear_weight`` [V_local, H] (and
    ``linear_bias`` [V_local]) are this rank's rows of the head, the global classes
    ``[vocab_start, vocab_start + V_local)``. The gradient of ``input`` is summed over the group
    (one all-reduce, in float32 for half-precision inputs), so it equals the single-process
    gradient on every rank; those of ``linear_weight`` and ``linear_bias`` are this rank's slices.
    Collectives: the layout exchange, one all-gather of [3, chunk] statistics per chunk, and the
    all-reduce of the input's gradient.

    Parameters
    ----------
    input : Tensor
        Hidden states [..., H], the same on every rank.
    linear_weight : Tensor
        This rank's rows [V_local, H] of the head.
    target : Tensor
        Global class ids [...], the same on every rank.
    linear_bias : Tensor, optional
        This rank's slice [V_local] of the bias.
    group, vocab_start, ignore_index, reduction, label_smoothing, z_loss
        As for :func:`vocab_parallel_cross_entropy`.
    chunk_size : int, optional
        Tokens per chunk, the same on every rank (default: from the largest slice).

    Returns
    -------
    Tensor
        As for :func:`vocab_parallel_cross_entropy`.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> import torch.distributed as dist
    >>> from logitops.distributed import vocab_parallel_linear_cross_entropy
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> hidden, head = torch.randn(16, 32), torch.randn(1000, 32)
    >>> target = torch.randint(0, 1000, (16,))
    >>> rank, world = dist.get_rank(), dist.get_world_size()
    >>> local_head = head[rank * 1000 // world : (rank + 1) * 1000 // world].requires_grad_()
    >>> loss = vocab_parallel_linear_cross_entropy(hidden, local_head, target, chunk_size=4)
    >>> torch.allclose(loss, torch.nn.functional.cross_entropy(hidden @ head.T, target))
    True
    >>> dist.destroy_process_group()
    """
    options = None
    error, num_rows, local_classes, hidden = None, 0, 0, 0
    try:
        options = _make_options(ignore_index, reduction, label_smoothing, z_loss)
        check_linear_arguments(input, linear_weight, linear_bias)
        _check_common(target, input.shape[:-1], input, options)
        if vocab_start is not None and (not isinstance(vocab_start, int) or vocab_start < 0):
            raise ValueError(f"vocab_start must be None or an int >= 0, got {vocab_start!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
        local_classes, hidden = linear_weight.shape[0], input.shape[-1]
        num_rows = target.numel()
        # Whether the forward computes the gradients (and all-reduces the input's): decided here,
        # where grad mode is still visible.
        needs_grad = torch.is_grad_enabled() and any(
            v is not None and v.requires_grad for v in (input, linear_weight, linear_bias)
        )
        mine = _RankArguments(
            -1 if vocab_start is None else vocab_start,
            local_classes,
            num_rows,
            chunk_size or 0,
            _DTYPE_CODES[input.dtype],
            REDUCTIONS.index(options.reduction),
            int(needs_grad),
        )
    except (TypeError, ValueError) as exc:
        error, mine = exc, None
    layout = _agree_on_layout(mine, group, input, error)
    if chunk_size is None:
        chunk_size = default_chunk_size(num_rows, layout.max_local_classes, input.element_size())
    x = input.reshape(num_rows, hidden)
    t = target.reshape(-1).to(torch.int64)
    _check_target_range(t, layout.num_classes, options.ignore_index)
    out = _VocabParallelLinearCrossEntropy.apply(
        x,
        linear_weight.to(x.dtype),
        None if linear_bias is None else linear_bias.to(x.dtype),
        t,
        layout,
        group,
        options,
        chunk_size,
        needs_grad,
    )
    return out.reshape(target.shape) if options.reduction == REDUCTION_NONE else out


# ----------------------------------------------------------------------------------------------
# Per-row losses with every cross-entropy option, for logitops.dtensor (and any caller that
# reduces the rows itself): class weights and probability targets next to ignore_index, label
# smoothing and z-loss. The slice's log-sum-exp (and, without weights, the target's logit and the
# logit sum) come from the vocab_parallel kernels; the weighted sums a weight or a probability
# target adds are one pass of ATen ops over the slice. One all-gather of [k, N] statistics.


@dataclass(frozen=True)
class RowOptions:
    """The per-row options of :func:`vocab_parallel_rows`.

    Parameters
    ----------
    ignore_index : int
        Class-index targets equal to it give a 0 loss (and no gradient).
    label_smoothing : float
        As in :func:`torch.nn.functional.cross_entropy`.
    z_loss : float
        As in :func:`logitops.cross_entropy`.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.distributed import RowOptions
    >>> RowOptions(ignore_index=-100, label_smoothing=0.1, z_loss=0.0).label_smoothing
    0.1
    """

    ignore_index: int
    label_smoothing: float
    z_loss: float


def _gather_rows(rows: Tensor, layout: VocabLayout, group: dist.ProcessGroup | None) -> Tensor:
    """[world, k, N]: every rank's float64 [k, N] statistics (one all-gather)."""
    if layout.world_size == 1:
        return rows.unsqueeze(0)
    device = _collective_device(group, rows)
    parts = [torch.empty_like(rows, device=device) for _ in range(layout.world_size)]
    dist.all_gather(parts, rows.to(device).contiguous(), group=group)
    return torch.stack(parts).to(rows.device)


def _finite_or_zero(lse: Tensor) -> Tensor:
    """A slice's log-sum-exp as the shift of its logits: 0 for an empty or all -inf slice."""
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def _prob_coefficients(probs, local_weight, label_smoothing, num_classes, acc):
    """a_c = w_c * ((1 - eps) * q_c + eps / C) on this rank's columns, in ``acc``."""
    a = probs.to(acc)
    if label_smoothing != 0.0:
        a = (1.0 - label_smoothing) * a + label_smoothing / num_classes
    return a if local_weight is None else a * local_weight


def _softmax_slice(logits: Tensor, lse: Tensor, acc: torch.dtype) -> Tensor:
    return torch.exp(logits.to(acc) - lse.unsqueeze(1))


class _VocabParallelRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, layout, group, options):
        acc = accumulation_dtype(logits.dtype)
        probs = target.is_floating_point()
        num_rows = logits.shape[0]
        start, size, num_classes = layout.vocab_start, layout.local_classes, layout.num_classes
        eps, zl = options.label_smoothing, options.z_loss
        local_weight = None if weight is None else weight[start : start + size].to(acc)
        ids = target
        if probs:  # a target on no rank: the kernel's target logit is 0 and unused
            ids = torch.full((num_rows,), -1, dtype=torch.int64, device=logits.device)
        stats = _vp_ops.vocab_parallel_cross_entropy_stats(logits, ids, start)
        ctx.set_materialize_grads(False)
        ctx.layout, ctx.options, ctx.probs = layout, options, probs
        if not probs and weight is None:
            opts = _Options(options.ignore_index, REDUCTION_NONE, eps, zl)
            lse, loss = _combine(stats, target, layout, group, opts, acc)
            ctx.save_for_backward(logits, target, None, lse, None)
            return loss, lse
        # Weighted sums relative to the slice's own log-sum-exp s_r, so that
        # sum_c a_c (lse - z_c) = sum_r [A_r (lse - s_r) - sum_{c in r} a_c (z_c - s_r)]
        # keeps the digits of rows whose logits are all large.
        # s_r rounded to acc, so that z_c - s_r is exact near s_r; the combine below uses the
        # same rounded value, recomputed from the gathered lse.
        shifted = logits.to(acc) - _finite_or_zero(stats[0]).to(acc).unsqueeze(1)
        if probs:
            a = _prob_coefficients(target, local_weight, eps, num_classes, acc)
            # An a_c of exactly 0 contributes 0, even on a -inf logit.
            az = torch.where(a != 0, a * shifted, torch.zeros_like(a))
            rows = torch.stack([stats[0], a.sum(1).double(), az.sum(1).double()])
        else:
            if eps != 0.0 and size > 0:
                wz = (shifted @ local_weight).double()
            else:
                wz = torch.zeros(num_rows, dtype=torch.float64, device=logits.device)
            mass = local_weight.sum().double().expand(num_rows)
            rows = torch.stack([stats[0], stats[1], wz, mass])
        gathered = _gather_rows(rows, layout, group)
        lse = torch.logsumexp(gathered[:, 0], dim=0)
        shift = _finite_or_zero(gathered[:, 0]).to(acc).double()
        if probs:
            total = gathered[:, 1].sum(0)  # sum_c a_c
            loss = (gathered[:, 1] * (lse - shift) - gathered[:, 2]).sum(0)
            if zl != 0.0:
                loss = loss + zl * lse * lse
            extra = total
        else:
            keep = target != options.ignore_index
            safe = torch.where(keep, target, torch.zeros_like(target)).clamp(0, num_classes - 1)
            w_t = torch.where(keep, weight.double()[safe], 0.0)
            loss = (1.0 - eps) * w_t * (lse - gathered[:, 1].sum(0))
            if eps != 0.0:
                smooth = (gathered[:, 3] * (lse - shift) - gathered[:, 2]).sum(0)
                loss = loss + eps / num_classes * smooth
            if zl != 0.0:
                loss = loss + zl * lse * lse
            loss = torch.where(keep, loss, torch.zeros_like(loss))
            opts = _Options(options.ignore_index, REDUCTION_NONE, eps, zl)
            loss = torch.where(_invalid_targets(target, layout, opts), torch.nan, loss)
            extra = w_t
        lse, loss = lse.to(acc), loss.to(acc)
        ctx.save_for_backward(logits, target, weight, lse, extra.to(acc))
        return loss, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_lse):
        logits, target, weight, lse, extra = ctx.saved_tensors
        layout, options, probs = ctx.layout, ctx.options, ctx.probs
        acc = lse.dtype
        start, size, num_classes = layout.vocab_start, layout.local_classes, layout.num_classes
        eps, zl = options.label_smoothing, options.z_loss
        num_rows = logits.shape[0]
        if grad_loss is None:
            grad_loss = torch.zeros(num_rows, dtype=acc, device=logits.device)
        grad_loss = grad_loss.to(acc)
        local_weight = None if weight is None else weight[start : start + size].to(acc)
        grad_logits = grad_target = None
        if not probs and weight is None:
            opts = _Options(options.ignore_index, REDUCTION_NONE, eps, zl)
            if ctx.needs_input_grad[0]:
                grad_logits = _slice_grad(grad_loss, logits, target, lse, layout, opts)
                if grad_lse is not None:
                    p = _softmax_slice(logits, lse, acc)
                    grad_logits = grad_logits.to(acc) + grad_lse.to(acc).unsqueeze(1) * p
            return _cast(grad_logits, logits), None, None, None, None, None
        coef = torch.zeros_like(grad_loss) if grad_lse is None else grad_lse.to(acc)
        if probs:
            a = _prob_coefficients(target, local_weight, eps, num_classes, acc)
            if ctx.needs_input_grad[0]:
                coef = coef + grad_loss * (extra + 2.0 * zl * lse)
                p = _softmax_slice(logits, lse, acc)
                grad_logits = coef.unsqueeze(1) * p - grad_loss.unsqueeze(1) * a
            if ctx.needs_input_grad[1]:
                scale = (1.0 - eps) * grad_loss.unsqueeze(1)
                if local_weight is not None:
                    scale = scale * local_weight
                grad_target = scale * (lse.unsqueeze(1) - logits.to(acc))
            return _cast(grad_logits, logits), _cast(grad_target, target), None, None, None, None
        if ctx.needs_input_grad[0]:
            opts = _Options(options.ignore_index, REDUCTION_NONE, eps, zl)
            keep = target != options.ignore_index
            grad_loss = torch.where(keep, grad_loss, torch.zeros_like(grad_loss))
            grad_loss = torch.where(_invalid_targets(target, layout, opts), torch.nan, grad_loss)
            w_t = extra
            mass = weight.to(acc).sum()
            coef = coef + grad_loss * ((1.0 - eps) * w_t + eps / num_classes * mass + 2 * zl * lse)
            grad_logits = coef.unsqueeze(1) * _softmax_slice(logits, lse, acc)
            if eps != 0.0:
                grad_logits = grad_logits - (eps / num_classes * grad_loss).unsqueeze(1) * (
                    local_weight.unsqueeze(0)
                )
            if size > 0:
                local_t = target - start
                in_slice = keep & (local_t >= 0) & (local_t < size)
                picked = torch.where(in_slice, -(1.0 - eps) * grad_loss * w_t, 0.0)
                grad_logits = grad_logits.scatter_add(
                    1, local_t.clamp(0, size - 1).unsqueeze(1), picked.unsqueeze(1).to(acc)
                )
        return _cast(grad_logits, logits), None, None, None, None, None


def _cast(grad: Tensor | None, like: Tensor) -> Tensor | None:
    return None if grad is None else grad.to(like.dtype)


def vocab_parallel_rows(
    local_logits: Tensor,
    target: Tensor,
    layout: VocabLayout,
    options: RowOptions,
    *,
    weight: Tensor | None = None,
    group: dist.ProcessGroup | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Per-row cross-entropy losses and log-sum-exps of vocabulary-sharded logits, with an
    agreed ``layout`` (no layout exchange, no argument checks: the building block of
    :mod:`logitops.dtensor`, whose DTensors carry the layout).

    ``local_logits`` [N, V_local] are the global classes ``[layout.vocab_start,
    layout.vocab_start + V_local)``; ``target`` is either global class ids [N] (int64, the same
    on every rank) or this rank's columns [N, V_local] of class probabilities; ``weight`` the
    full class weights [V] (the same on every rank). Per row, as :func:`logitops.cross_entropy`
    with ``reduction="none"``: ``(1 - eps) w_y (lse - z_y) + eps / V sum_c w_c (lse - z_c) +
    z_loss lse**2`` (0 where ``y == ignore_index``) for class ids, ``sum_c w_c q_c (lse - z_c) +
    z_loss lse**2`` with ``q = (1 - eps) t + eps / V`` for probabilities. Both results are in the
    accumulation dtype (float32, float64 for float64), the same on every rank, and
    differentiable (the gradient of ``local_logits`` is this rank's slice; that of a
    probability ``target``, its columns). One all-gather of [k, N] float64 statistics. Without
    weights or probabilities the forward and backward are the two vocab_parallel kernels; class
    weights and probability targets add a few [N, V_local] temporaries in the accumulation dtype
    (their weighted sums and gradients are ATen ops over the slice).

    Parameters
    ----------
    local_logits : Tensor
        This rank's columns [N, V_local].
    target : Tensor
        Class ids [N] or this rank's probability columns [N, V_local].
    layout : VocabLayout
        Where this rank's columns sit (the same vocabulary on every rank).
    options : RowOptions
        ignore_index, label_smoothing, z_loss.
    weight : Tensor, optional
        Class weights [V], the whole vocabulary.
    group : torch.distributed.ProcessGroup, optional
        The ranks that share the vocabulary (default: the default group; not used for one rank).

    Returns
    -------
    (Tensor, Tensor)
        The per-row losses [N] and log-sum-exps [N].

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.distributed import RowOptions, VocabLayout, vocab_parallel_rows
    >>> logits, target = torch.randn(4, 10), torch.tensor([1, 9, -100, 3])
    >>> weight = torch.rand(10)
    >>> layout = VocabLayout(0, 10, 10, 10, world_size=1)  # one rank holds every class
    >>> loss, lse = vocab_parallel_rows(logits, target, layout, RowOptions(-100, 0.1, 0.0),
    ...                                 weight=weight)
    >>> expected = torch.nn.functional.cross_entropy(
    ...     logits, target, weight, reduction="none", label_smoothing=0.1)
    >>> torch.allclose(loss, expected, atol=1e-6)
    True
    """
    return _VocabParallelRows.apply(local_logits, target, weight, layout, group, options)
