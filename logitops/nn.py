"""Modules over logitops.functional; drop-ins for their torch.nn namesakes."""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as lf
from ._validation import check_cross_entropy_options

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "DistillationLoss",
    "LinearCrossEntropyLoss",
    "Sampler",
    "VocabParallelCrossEntropyLoss",
]


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Fused :class:`torch.nn.CrossEntropyLoss`: same arguments, ``state_dict`` keys and call,
    plus keyword-only ``z_loss`` and ``softcap`` (see :func:`logitops.functional.cross_entropy`).

    Parameters
    ----------
    weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As in :class:`torch.nn.CrossEntropyLoss`.
    z_loss : float
        Weight of ``lse**2`` per non-ignored element.
    softcap : float, optional
        Logits soft-capped to ``softcap * tanh(logits / softcap)``.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> criterion = logitops.nn.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-4)
    >>> criterion
    CrossEntropyLoss(reduction='mean', ignore_index=-100, label_smoothing=0.1, z_loss=0.0001)
    >>> round(criterion(torch.zeros(2, 4), torch.tensor([1, 3])).item(), 4)  # log(4) + z-loss
    1.3865
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        check_cross_entropy_options(label_smoothing, z_loss, softcap)
        self.z_loss = z_loss
        self.softcap = softcap

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return lf.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
        )

    def extra_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}", f"ignore_index={self.ignore_index}"]
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        return ", ".join(parts)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """Fused :class:`torch.nn.BCEWithLogitsLoss`: same arguments, buffers (``weight``,
    ``pos_weight``), ``state_dict`` keys and call.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> criterion = logitops.nn.BCEWithLogitsLoss(pos_weight=torch.full((8,), 2.0))
    >>> logits, labels = torch.randn(4, 8), torch.rand(4, 8)
    >>> reference = torch.nn.BCEWithLogitsLoss(pos_weight=torch.full((8,), 2.0))
    >>> torch.allclose(criterion(logits, labels), reference(logits, labels))
    True
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return lf.binary_cross_entropy_with_logits(
            input, target, self.weight, reduction=self.reduction, pos_weight=self.pos_weight
        )


class Sampler(torch.nn.Module):
    """Samples token ids from [batch, vocab] logits with fixed filtering settings (see
    :func:`logitops.sample`). No parameters or buffers.

    Parameters
    ----------
    temperature, top_k, top_p, min_p, order
        As for :func:`logitops.sample`: numbers, or per-row tensors [B].

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> sampler = logitops.nn.Sampler(temperature=0.7, top_p=0.95)
    >>> sampler
    Sampler(temperature=0.7, top_k=None, top_p=0.95, min_p=None, order='hf')
    >>> tokens = sampler(torch.randn(2, 1000), seed=torch.tensor([5, 6]))
    >>> tokens.shape, tokens.dtype
    (torch.Size([2]), torch.int64)
    >>> logitops.nn.Sampler(temperature=0.0)(torch.tensor([[0.0, 2.0, 1.0]]))  # greedy
    tensor([1])
    """

    def __init__(
        self,
        temperature: float | Tensor = 1.0,
        top_k: int | Tensor | None = None,
        top_p: float | Tensor | None = None,
        min_p: float | Tensor | None = None,
        *,
        order: str = "hf",
    ) -> None:
        super().__init__()
        self.temperature, self.top_k, self.top_p, self.min_p = temperature, top_k, top_p, min_p
        self.order = order

    def forward(
        self,
        logits: Tensor,
        *,
        logit_bias: Tensor | None = None,
        seed: int | Tensor | None = None,
        generator: torch.Generator | None = None,
        return_logprobs: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        return lf.sample(
            logits,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            logit_bias=logit_bias,
            order=self.order,
            seed=seed,
            generator=generator,
            return_logprobs=return_logprobs,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, "
            f"min_p={self.min_p}, order={self.order!r}"
        )


class DistillationLoss(torch.nn.Module):
    """``alpha * CE(student, target) + (1 - alpha) * T^2 * KL_T`` (see
    :func:`logitops.functional.distillation_loss`). No parameters or buffers.

    Parameters
    ----------
    temperature, alpha, kind, beta, ignore_index
        As for :func:`logitops.distillation_loss`.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> criterion = logitops.nn.DistillationLoss(temperature=2.0, alpha=0.5)
    >>> student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    >>> target = torch.tensor([1, 2, 3, 4])
    >>> loss = criterion(student, teacher, target)
    >>> expected = logitops.distillation_loss(student, teacher, target, temperature=2.0)
    >>> torch.equal(loss, expected)
    True
    """

    def __init__(
        self,
        temperature: float = 2.0,
        alpha: float = 0.5,
        kind: str = "forward",
        beta: float = 0.5,
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        self.temperature, self.alpha, self.kind = temperature, alpha, kind
        self.beta, self.ignore_index = beta, ignore_index

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor | None = None
    ) -> Tensor:
        return lf.distillation_loss(
            student_logits,
            teacher_logits,
            target,
            temperature=self.temperature,
            alpha=self.alpha,
            kind=self.kind,
            beta=self.beta,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, alpha={self.alpha}, kind={self.kind!r}, "
            f"beta={self.beta}, ignore_index={self.ignore_index}"
        )


class LinearCrossEntropyLoss(torch.nn.Module):
    """Fused ``linear + cross_entropy`` over hidden states and an LM head's weight (see
    :func:`logitops.functional.linear_cross_entropy`). Holds no parameters: pass the head's
    weight (and bias) at call time.

    Parameters
    ----------
    weight : Tensor, optional
        Class weights [V] (a buffer).
    ignore_index, reduction, label_smoothing, options, z_loss, softcap, chunk_size
        As for :func:`logitops.linear_cross_entropy`.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> criterion = logitops.nn.LinearCrossEntropyLoss(ignore_index=-100)
    >>> head = torch.nn.Linear(64, 1000, bias=False)
    >>> hidden, target = torch.randn(32, 64), torch.randint(0, 1000, (32,))
    >>> loss = criterion(hidden, head.weight, target)
    >>> torch.allclose(loss, torch.nn.functional.cross_entropy(head(hidden), target))
    True
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        options=None,
        z_loss: float = 0.0,
        softcap: float | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.z_loss, self.softcap = label_smoothing, z_loss, softcap
        self.options, self.chunk_size = options, chunk_size

    def forward(
        self,
        input: Tensor,
        linear_weight: Tensor,
        target: Tensor,
        linear_bias: Tensor | None = None,
    ) -> Tensor:
        return lf.linear_cross_entropy(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            options=self.options,
            z_loss=self.z_loss,
            softcap=self.softcap,
            chunk_size=self.chunk_size,
        )


class VocabParallelCrossEntropyLoss(torch.nn.Module):
    """Cross-entropy of logits whose vocabulary is split across the ranks of ``group`` (see
    :func:`logitops.distributed.vocab_parallel_cross_entropy`). Called with this rank's
    ``local_logits`` [..., V_local] and the global ``target`` [...], on every rank of the group.

    Parameters
    ----------
    ignore_index, reduction, label_smoothing, z_loss, group, vocab_start
        As for :func:`logitops.distributed.vocab_parallel_cross_entropy`.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> import torch.distributed as dist
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> criterion = logitops.nn.VocabParallelCrossEntropyLoss(label_smoothing=0.1)
    >>> local_logits, target = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])  # one rank: all
    >>> loss = criterion(local_logits, target)  # the same loss on every rank
    >>> expected = torch.nn.functional.cross_entropy(local_logits, target, label_smoothing=0.1)
    >>> torch.allclose(loss, expected)
    True
    >>> dist.destroy_process_group()
    """

    def __init__(
        self,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        group: torch.distributed.ProcessGroup | None = None,
        vocab_start: int | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.z_loss = label_smoothing, z_loss
        self.group, self.vocab_start = group, vocab_start

    def forward(self, local_logits: Tensor, target: Tensor) -> Tensor:
        from .distributed import vocab_parallel_cross_entropy

        return vocab_parallel_cross_entropy(
            local_logits,
            target,
            group=self.group,
            vocab_start=self.vocab_start,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
        )

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"vocab_start={self.vocab_start}"
        )
