"""DTensor inputs of :func:`logitops.cross_entropy` and :func:`logitops.linear_cross_entropy`.

Tensor-parallel models (``torch.distributed.tensor.parallel.parallelize_module``, torchtitan)
hand their losses DTensors: logits sharded on the vocabulary (a ``ColwiseParallel`` LM head with
``use_local_output=False``), on the tokens, or replicated, and LM-head weights sharded on their
rows. The public functions route any call with a DTensor argument here (logitops._dispatch), and
the result is a DTensor on the input's mesh, as torch's DTensor losses return: a replicated
scalar for ``mean`` / ``sum``; per-element losses (and ``return_lse``'s log-sum-exp) laid out
like the target for ``none``.

Layouts, per mesh dimension (any number of mesh dimensions): ``Replicate``; ``Shard`` of the
class dimension (the vocabulary; on at most one mesh dimension), which runs the vocabulary-
parallel kernels over that mesh dimension's process group (one all-gather of per-row statistics,
no logits gathered) with class weights, ``ignore_index``, label smoothing, z-loss, soft-capping
and probability targets; ``Shard`` of any other dimension (the tokens), where each rank computes
its own tokens and the reduction is finished with one all-reduce of a scalar. The target is a
DTensor (redistributed to the logits' token layout when it differs) or a plain tensor holding the
whole target on every rank; class weights likewise. ``Partial`` placements, a vocabulary sharded
over two mesh dimensions and a head sharded on its hidden dimension raise ``ValueError``.

The extension point, and why. DTensor offers two: sharding rules for an operator
(``register_sharding``, or the strategies DTensor keeps for ATen ops), and the documented
boundary between DTensor and local code (``to_local`` / ``from_local`` with their autograd,
which ``local_map`` packages). A sharding rule can only describe outputs that are shards,
replicas or ``Partial`` sums (or max / min) of the local results; the vocabulary-parallel loss
combines the ranks' log-sum-exps non-linearly, so no rule describes it (torch's own
``loss_parallel`` resorts to private per-op handlers for that reason, and needs its context
around the backward). So the losses cross that boundary: the local shards go to our kernels with
the mesh dimension's process group, and the results come back through ``DTensor.from_local``
with their placements (``Partial`` over the token-sharded mesh dimensions, then redistributed by
DTensor itself to ``Replicate``), so gradients reach the DTensor leaves through DTensor's own
autograd, and nothing has to stay open around ``backward()``. ``local_map`` itself is not used
because, in torch 2.13, it derives the global shape of its outputs as if every shard were the
same size, which an uneven token split (7 tokens over 3 ranks) breaks; ``from_local`` with the
global shape does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.tensor import DeviceMesh, DTensor, Partial, Replicate, Shard
from torch.nn import _reduction as _Reduction

from . import _dispatch
from . import functional as lf
from ._validation import check_cross_entropy_options, check_floating, check_reduction
from .distributed import (
    RowOptions,
    VocabLayout,
    _check_target_range,
    vocab_parallel_linear_cross_entropy,
    vocab_parallel_rows,
)
from .ops._common import REDUCTION_NONE, accumulation_dtype

__all__ = ["cross_entropy", "linear_cross_entropy"]


@dataclass(frozen=True)
class _Layout:
    """How a tensor's placements split its work: the mesh dimension that shards the vocabulary
    (None: every rank holds every class), the mesh dimensions that shard the tokens, and the
    placements of the per-token results (the target's layout)."""

    mesh: DeviceMesh
    placements: tuple
    vocab_mesh_dim: int | None
    token_mesh_dims: tuple[int, ...]
    row_placements: tuple


def _analyse(tensor: DTensor, class_dim: int, name: str, *, rows_dim_shift: bool) -> _Layout:
    """The layout of ``tensor`` whose classes (or hidden units, for an LM head's input) sit on
    ``class_dim``. With ``rows_dim_shift`` the per-token results drop ``class_dim``."""
    vocab, tokens, rows = None, [], []
    for mesh_dim, placement in enumerate(tensor.placements):
        if placement.is_replicate():
            rows.append(Replicate())
            continue
        if type(placement) is Shard:
            dim = placement.dim % tensor.ndim
            if dim == class_dim:
                if vocab is not None:
                    raise ValueError(
                        f"{name}: the class dimension {class_dim} is sharded over mesh "
                        f"dimensions {vocab} and {mesh_dim}; logitops shards the vocabulary "
                        "over one mesh dimension (redistribute the others to Replicate)"
                    )
                vocab = mesh_dim
                rows.append(Replicate())
            else:
                tokens.append(mesh_dim)
                rows.append(Shard(dim - 1 if rows_dim_shift and dim > class_dim else dim))
            continue
        raise ValueError(
            f"{name} has placement {placement} on mesh dimension {mesh_dim}; logitops takes "
            "Shard and Replicate placements (redistribute a Partial tensor to Replicate first)"
        )
    return _Layout(tensor.device_mesh, tuple(tensor.placements), vocab, tuple(tokens), tuple(rows))


def _no_partial(tensor: DTensor, name: str) -> None:
    for mesh_dim, placement in enumerate(tensor.placements):
        if not (placement.is_replicate() or type(placement) is Shard):
            raise ValueError(
                f"{name} has placement {placement} on mesh dimension {mesh_dim}; logitops takes "
                "Shard and Replicate placements (redistribute a Partial tensor first)"
            )


def _on_mesh(tensor: Tensor, mesh: DeviceMesh, placements: tuple, name: str) -> DTensor:
    """``tensor`` as a DTensor with ``placements``: a DTensor is redistributed (by DTensor) when
    its placements differ; a plain tensor is the whole tensor, the same on every rank."""
    if isinstance(tensor, DTensor):
        if tensor.device_mesh != mesh:
            raise ValueError(f"{name} is on another device mesh than input")
        _no_partial(tensor, name)
    else:
        tensor = DTensor.from_local(tensor, mesh, [Replicate()] * mesh.ndim, run_check=False)
    if tuple(tensor.placements) != tuple(placements):
        tensor = tensor.redistribute(mesh, placements)
    return tensor


def _full(tensor: Tensor | None, mesh: DeviceMesh, name: str) -> Tensor | None:
    """The whole of a small tensor (class weights) on every rank, as a plain tensor."""
    if tensor is None or not isinstance(tensor, DTensor):
        return tensor
    if tensor.device_mesh != mesh:
        raise ValueError(f"{name} is on another device mesh than input")
    _no_partial(tensor, name)
    return tensor.full_tensor()


def _vocab_layout(layout: _Layout, num_classes: int, local_classes: int) -> VocabLayout:
    """This rank's slice of the vocabulary under ``Shard``'s split (torch.chunk: slices of
    ceil(V / W) classes, the last ones shorter or empty)."""
    mesh, dim = layout.mesh, layout.vocab_mesh_dim
    world, rank = mesh.size(dim), mesh.get_local_rank(dim)
    chunk = -(-num_classes // world)
    start = min(rank * chunk, num_classes)
    size = max(0, min(chunk, num_classes - start))
    if size != local_classes:
        raise ValueError(
            f"the vocabulary shard of rank {rank} holds {local_classes} classes where Shard's "
            f"split of {num_classes} over {world} ranks gives {size}"
        )
    return VocabLayout(start, size, num_classes, chunk, world)


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(tuple(shape)):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def _rows_dtensor(rows: Tensor, layout: _Layout, shape) -> DTensor:
    """Per-token results laid out like the target (global ``shape``)."""
    return DTensor.from_local(
        rows.contiguous(),
        layout.mesh,
        layout.row_placements,
        run_check=False,
        shape=torch.Size(shape),
        stride=_contiguous_stride(shape),
    )


def _global_sum(value: Tensor, layout: _Layout) -> DTensor:
    """The sum over the token shards of a per-rank scalar, replicated (DTensor's all-reduce),
    differentiable."""
    partial = [
        Partial() if d in layout.token_mesh_dims else Replicate()
        for d in range(len(layout.placements))
    ]
    out = DTensor.from_local(value, layout.mesh, partial, run_check=False)
    return out.redistribute(layout.mesh, [Replicate()] * layout.mesh.ndim)


def _reduce(rows_or_sum, reduction, layout, shape, norm, dtype):
    """Finish the reduction over all tokens: ``rows_or_sum`` are this rank's per-token losses
    (``none``) or their sum; ``norm`` this rank's share of the ``mean`` divisor (or a global
    count, given as a Python number)."""
    if reduction == REDUCTION_NONE:
        return _rows_dtensor(rows_or_sum.to(dtype), layout, shape)
    acc = accumulation_dtype(dtype)
    total = rows_or_sum.to(acc)
    if reduction == "mean":
        if isinstance(norm, Tensor):
            norm = _global_sum(norm.to(acc).detach(), layout).to_local()
        norm = torch.as_tensor(norm, dtype=acc, device=total.device)
        # A mean over nothing is NaN and its gradient 0, as the single-device loss.
        scale = torch.where(norm != 0, 1.0 / norm, torch.zeros_like(norm))
        total = total * scale + torch.where(norm != 0, 0.0, torch.nan).to(acc)
    return _global_sum(total, layout).to(dtype)


def _check_target_shape(input: Tensor, target: Tensor, class_dim: int) -> bool:
    """Whether the target holds probabilities; raises on a shape mismatch."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(
                f"target of dtype {target.dtype} is read as class probabilities and must have "
                f"the input's shape {tuple(input.shape)}, got {tuple(target.shape)}"
            )
        return True
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
    return False


def _to_rows(local: Tensor, class_dim: int) -> Tensor:
    """[..., C] rows of a local shard whose classes sit on ``class_dim``."""
    rows = local.unsqueeze(0) if local.dim() == 1 else local.movedim(class_dim, -1)
    num_rows = 1
    for size in rows.shape[:-1]:  # not -1: an empty vocabulary shard leaves it ambiguous
        num_rows *= size
    return rows.reshape(num_rows, local.shape[class_dim])


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
):
    r""":func:`logitops.cross_entropy` of DTensor logits; the public function calls it for any
    DTensor argument, so call that one.

    ``input`` is a DTensor (C), (N, C) or (N, C, d1, ...) whose class dimension may be sharded
    on one mesh dimension (vocabulary parallel) and whose other dimensions may be sharded on the
    others (tokens); ``target`` (class ids or probabilities) and ``weight`` are DTensors on the
    same mesh or plain tensors holding the whole tensor on every rank. The loss equals the
    single-process loss of the full tensors, and so do the gradients of the DTensor leaves.

    Parameters
    ----------
    input : DTensor
        Logits, placements Replicate or Shard on each mesh dimension.
    target : Tensor or DTensor
        Class ids (the input's shape without C) or probabilities (the input's shape).
    weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As in :func:`logitops.cross_entropy`.
    z_loss, softcap, return_lse
        As in :func:`logitops.cross_entropy`.

    Returns
    -------
    DTensor, or (DTensor, DTensor) with ``return_lse``
        A replicated scalar for ``mean`` / ``sum``; per element, laid out like the target, for
        ``none`` (and the log-sum-exp).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> import torch.distributed as dist
    >>> from torch.distributed.device_mesh import init_device_mesh
    >>> from torch.distributed.tensor import Shard, distribute_tensor
    >>> # Every rank runs this; here the mesh has one rank.
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    >>> logits, target = torch.randn(8, 1000), torch.randint(0, 1000, (8,))
    >>> sharded = distribute_tensor(logits, mesh, [Shard(1)]).requires_grad_()  # vocabulary
    >>> loss = logitops.cross_entropy(sharded, target, label_smoothing=0.1)
    >>> expected = torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
    >>> torch.allclose(loss.full_tensor(), expected)
    True
    >>> loss.backward()  # sharded.grad: a DTensor sharded like the logits
    >>> dist.destroy_process_group()
    """
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    reduction = check_reduction(reduction)
    if not isinstance(input, DTensor):
        raise TypeError(
            "input must be a DTensor when target or weight is one (make the logits a DTensor "
            "on the same mesh, e.g. with DTensor.from_local)"
        )
    check_floating("input", input)
    if input.dim() == 0:
        raise ValueError("input must have at least 1 dimension (C), (N, C) or (N, C, d1, ...)")
    check_cross_entropy_options(label_smoothing, z_loss, softcap)
    class_dim = 0 if input.dim() == 1 else 1
    num_classes = input.shape[class_dim]
    probs = _check_target_shape(input, target, class_dim)
    if probs and ignore_index != -100:
        raise ValueError(
            "ignore_index is not supported for floating point target (class-probability "
            f"targets), got ignore_index={ignore_index}"
        )
    layout = _analyse(input, class_dim, "input", rows_dim_shift=True)
    mesh = layout.mesh
    weight = _full(weight, mesh, "weight")
    if weight is not None:
        check_floating("weight", weight)
        if weight.dim() != 1 or weight.shape[0] != num_classes:
            raise ValueError(
                f"weight must be a 1-D tensor of {num_classes} class weights, got shape "
                f"{tuple(weight.shape)}"
            )
        weight = weight.detach()
    target_placements = layout.placements if probs else layout.row_placements
    target = _on_mesh(target, mesh, target_placements, "target")
    row_shape = (
        target.shape if not probs else target.shape[:class_dim] + target.shape[class_dim + 1 :]
    )
    local = input.to_local()
    local_target = target.to_local()
    acc = accumulation_dtype(input.dtype)

    if layout.vocab_mesh_dim is None:
        # Each rank holds whole rows: the single-device kernels on its own tokens.
        local_reduction = REDUCTION_NONE if reduction == REDUCTION_NONE else "sum"
        out = lf.cross_entropy(
            local, local_target, weight, ignore_index=ignore_index, reduction=local_reduction,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, return_lse=True,
        )  # fmt: skip
        loss_local, lse_local = out
    else:
        vocab = _vocab_layout(layout, num_classes, local.shape[class_dim])
        group = mesh.get_group(layout.vocab_mesh_dim)
        logits = local
        if softcap is not None:
            logits = softcap * torch.tanh(logits.to(acc) / softcap)
        logits = _to_rows(logits, class_dim)
        if probs:
            t = _to_rows(local_target, class_dim).to(logits.dtype)
        else:
            t = local_target.reshape(-1).to(torch.int64)
            _check_target_range(t, num_classes, ignore_index)
        options = RowOptions(int(ignore_index), float(label_smoothing), float(z_loss))
        rows, lse_rows = vocab_parallel_rows(logits, t, vocab, options, weight=weight, group=group)
        local_row_shape = local_target.shape if not probs else (
            local_target.shape[:class_dim] + local_target.shape[class_dim + 1 :]
        )  # fmt: skip
        lse_local = lse_rows.reshape(local_row_shape)
        rows = rows.reshape(local_row_shape)
        loss_local = rows if reduction == REDUCTION_NONE else rows.sum()

    if probs:
        norm = float(row_shape.numel())
    elif weight is None:
        norm = (local_target != ignore_index).sum()
    else:
        keep = local_target != ignore_index
        safe = torch.where(keep, local_target, torch.zeros_like(local_target))
        safe = safe.clamp(0, num_classes - 1).to(torch.int64)
        norm = torch.where(keep, weight.to(acc)[safe], 0.0).sum()
    loss = _reduce(loss_local, reduction, layout, row_shape, norm, input.dtype)
    if return_lse:
        return loss, _rows_dtensor(lse_local.to(acc), layout, row_shape)
    return loss


def _autocast_on(tensor: Tensor) -> bool:
    return tensor.dtype != torch.float64 and torch.is_autocast_enabled(tensor.device.type)


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
):
    r""":func:`logitops.linear_cross_entropy` with DTensor arguments; the public function calls
    it for any DTensor argument, so call that one.

    The tensor-parallel case: ``linear_weight`` [V, H] (and ``linear_bias`` [V]) the DTensor
    parameters of a ``ColwiseParallel`` LM head (``Shard(0)``: each rank holds a slice of the
    vocabulary), ``input`` [..., H] replicated on that mesh dimension (a DTensor, or a plain
    tensor holding the whole input; a DTensor sharded there, as sequence parallelism leaves it,
    is all-gathered as ``ColwiseParallel`` would) and possibly sharded on its tokens over the
    other mesh dimensions. Class-index targets without class weights or soft-capping run
    :func:`logitops.distributed.vocab_parallel_linear_cross_entropy` on the local shards, chunk by
    chunk, without the logits; the other options compute the logits DTensor (``F.linear`` on
    DTensors, sharded on the vocabulary) and call :func:`logitops.cross_entropy` on it. A head
    sharded on its hidden dimension raises ``ValueError``.

    Parameters
    ----------
    input : Tensor or DTensor
        Hidden states [..., H].
    linear_weight : Tensor or DTensor
        The head [V, H]: Shard(0) or Replicate on each mesh dimension.
    target : Tensor or DTensor
        Class ids [...] (or probabilities [..., V]).
    linear_bias, weight, reduction, ignore_index, label_smoothing, options
        As in :func:`logitops.linear_cross_entropy`.
    z_loss, softcap, chunk_size
        As in :func:`logitops.linear_cross_entropy`.

    Returns
    -------
    DTensor
        As for :func:`cross_entropy`.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> import torch.distributed as dist
    >>> from torch.distributed.device_mesh import init_device_mesh
    >>> from torch.distributed.tensor import Shard, distribute_tensor
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    >>> hidden, head = torch.randn(16, 32), torch.randn(1000, 32)
    >>> target = torch.randint(0, 1000, (16,))
    >>> local_head = distribute_tensor(head, mesh, [Shard(0)]).requires_grad_()  # colwise
    >>> loss = logitops.linear_cross_entropy(hidden, local_head, target, chunk_size=4)
    >>> expected = torch.nn.functional.cross_entropy(hidden @ head.T, target)
    >>> torch.allclose(loss.full_tensor(), expected)
    True
    >>> dist.destroy_process_group()
    """
    reduction = check_reduction(reduction)
    mesh = next(t.device_mesh for t in (linear_weight, input, target, linear_bias, weight)
                if isinstance(t, DTensor))  # fmt: skip
    if not isinstance(linear_weight, Tensor) or linear_weight.dim() != 2:
        raise ValueError(
            "linear_weight must be a [vocab, hidden] head when any argument is a DTensor, got "
            f"{getattr(linear_weight, 'shape', type(linear_weight).__name__)}"
        )
    if not isinstance(input, Tensor) or input.dim() < 1:
        raise ValueError("input must be a tensor [..., hidden]")
    replicated = tuple([Replicate()] * mesh.ndim)
    head = linear_weight
    if not isinstance(head, DTensor):
        head = _on_mesh(head, mesh, replicated, "linear_weight")
    if head.device_mesh != mesh:
        raise ValueError("linear_weight is on another device mesh than input")
    head_layout = _analyse(head, 0, "linear_weight", rows_dim_shift=False)
    if head_layout.token_mesh_dims:
        raise ValueError(
            f"linear_weight has placements {head.placements}: a head sharded on its hidden "
            "dimension (RowwiseParallel) gives Partial logits, which logitops does not take; "
            "shard the LM head on the vocabulary (ColwiseParallel, Shard(0))"
        )
    vocab_dim = head_layout.vocab_mesh_dim
    bias = linear_bias
    if bias is not None:
        bias = _on_mesh(bias, mesh, tuple(head.placements), "linear_bias")
    # The input: Replicate on the vocabulary's mesh dimension, its tokens sharded anywhere else.
    x = input if isinstance(input, DTensor) else _on_mesh(input, mesh, replicated, "input")
    if x.device_mesh != mesh:
        raise ValueError("input is on another device mesh than linear_weight")
    _no_partial(x, "input")
    wanted = list(x.placements)
    for placement in wanted:
        if type(placement) is Shard and placement.dim % x.ndim == x.ndim - 1:
            raise ValueError(
                f"input has placements {x.placements}: its hidden dimension is sharded; "
                "logitops takes hidden states sharded on their tokens or replicated"
            )
    if vocab_dim is not None:
        wanted[vocab_dim] = Replicate()
    x = _on_mesh(x, mesh, tuple(wanted), "input")
    layout = _analyse(x, x.ndim - 1, "input", rows_dim_shift=True)

    fused = (
        isinstance(target, Tensor) and not target.is_floating_point() and weight is None
        and softcap is None and not _autocast_on(x)
    )  # fmt: skip
    if not fused:
        logits = F.linear(x, head, bias)
        if isinstance(target, Tensor) and target.is_floating_point():
            ii = -100 if ignore_index is None else ignore_index
        else:
            ii = -100 if ignore_index is None else int(ignore_index)
        flat = logits.reshape(-1, logits.shape[-1]) if logits.dim() > 2 else logits
        flat_target = target
        if isinstance(target, Tensor) and logits.dim() > 2:
            flat_target = target.reshape(-1, target.shape[-1]) if target.is_floating_point() else (
                target.reshape(-1)
            )  # fmt: skip
        out = lf.cross_entropy(
            flat, flat_target, weight, ignore_index=ii, reduction=reduction,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        )  # fmt: skip
        if reduction == REDUCTION_NONE and logits.dim() > 2:
            out = out.reshape(logits.shape[:-1])
        return out

    ignore_index = -100 if ignore_index is None else int(ignore_index)
    if target.shape != x.shape[:-1]:
        raise ValueError(
            f"target must be integer class indices of shape {tuple(x.shape[:-1])}, got "
            f"{target.dtype} {tuple(target.shape)}"
        )
    target = _on_mesh(target, mesh, layout.row_placements, "target")
    local_x, local_t = x.to_local(), target.to_local()
    # The head is replicated over the token-sharded mesh dimensions: each rank's gradient is
    # its tokens' share, a Partial sum (as DTensor's own matmul leaves it).
    grad_placements = [
        Partial() if mesh_dim in layout.token_mesh_dims else placement
        for mesh_dim, placement in enumerate(head.placements)
    ]
    local_w = head.to_local(grad_placements=grad_placements)
    local_b = None if bias is None else bias.to_local(grad_placements=grad_placements)
    if chunk_size is None and options is not None:
        size = getattr(options, "batch_chunk_size", None)
        chunk_size = size if isinstance(size, int) and not isinstance(size, bool) else None
    local_reduction = REDUCTION_NONE if reduction == REDUCTION_NONE else "sum"
    if vocab_dim is None:
        loss_local = lf.linear_cross_entropy(
            local_x, local_w, local_t, linear_bias=local_b, reduction=local_reduction,
            ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
            chunk_size=chunk_size,
        )  # fmt: skip
    else:
        vocab = _vocab_layout(head_layout, head.shape[0], local_w.shape[0])
        loss_local = vocab_parallel_linear_cross_entropy(
            local_x, local_w, local_t, linear_bias=local_b,
            group=mesh.get_group(vocab_dim), vocab_start=vocab.vocab_start,
            ignore_index=ignore_index, reduction=local_reduction,
            label_smoothing=label_smoothing, z_loss=z_loss, chunk_size=chunk_size,
        )  # fmt: skip
    norm = (local_t != ignore_index).sum()
    return _reduce(loss_local, reduction, layout, target.shape, norm, x.dtype)


_dispatch.register_dtensor_handler("cross_entropy", cross_entropy)
_dispatch.register_dtensor_handler("linear_cross_entropy", linear_cross_entropy)
