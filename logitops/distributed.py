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
    "VocabLayout",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
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
) -> Tensor:
    r"""Cross-entropy of logits whose vocabulary is split across the ranks of ``group``.

    ``local_logits`` [..., V_local] are this rank's columns: the global classes
    ``[vocab_start, vocab_start + V_local)``. By default the slices follow rank order (rank r
    starts where rank r - 1 ends; slices may be unequal); pass ``vocab_start`` on every rank for
    any other arrangement. ``target`` [...] holds global class ids (or ``ignore_index``) and is the
    same on every rank. The result, on every rank, is
    ``F.cross_entropy(full_logits, target, ignore_index=..., reduction=..., label_smoothing=...)``
    plus ``z_loss * lse**2`` per row; the gradient of ``local_logits`` is this rank's slice of the
    full gradient. Costs two all-gathers (the layout: 8 integers per rank; the statistics: 3
    floats per row per rank), and one host sync for the layout.

    With NCCL the collectives run on the logits' GPU; with gloo on the CPU (CUDA statistics are
    copied to the host and back: [3, N] floats per call).

    Parameters
    ----------
    local_logits : Tensor
        This rank's columns [..., V_local] of the logits.
    target : Tensor
        Global class ids [...], the same on every rank.
    group : torch.distributed.ProcessGroup, optional
        The ranks that share the vocabulary (default: the default group).
    vocab_start : int, optional
        Global id of this rank's first class (default: the slices in rank order).
    ignore_index, reduction, label_smoothing
        As in :func:`torch.nn.functional.cross_entropy`.
    z_loss : float
        As in :func:`logitops.cross_entropy`.

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
        _check_common(target, local_logits.shape[:-1], local_logits, options)
        if vocab_start is not None and (not isinstance(vocab_start, int) or vocab_start < 0):
            raise ValueError(f"vocab_start must be None or an int >= 0, got {vocab_start!r}")
        local_classes = local_logits.shape[-1]
        num_rows = target.numel()
        mine = _RankArguments(
            -1 if vocab_start is None else vocab_start,
            local_classes,
            num_rows,
            0,
            _DTYPE_CODES[local_logits.dtype],
            REDUCTIONS.index(options.reduction),
            0,  # the backward needs no collective
        )
    except (TypeError, ValueError) as exc:
        error, mine = exc, None
    layout = _agree_on_layout(mine, group, local_logits, error)
    logits_2d = local_logits.reshape(num_rows, local_classes)
    target_1d = target.reshape(-1).to(torch.int64)
    # Every rank holds the same targets, so every rank raises alike.
    _check_target_range(target_1d, layout.num_classes, options.ignore_index)
    out = _VocabParallelCrossEntropy.apply(logits_2d, target_1d, layout, group, options)
    return out.reshape(target.shape) if options.reduction == REDUCTION_NONE else out


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
