"""The losses as compositions of differentiable ATen ops, with exactly the kernels' semantics.

The fused kernels compute first-order gradients only, and the dispatcher's autograd for custom
ops supports neither forward-mode AD nor functorch transforms. Two routes lead here instead:

- higher-order autograd: when a backward runs with ``create_graph=True``, it recomputes its
  gradients through these functions (``recompute_vjp``), so the gradient has a graph;
- ``torch.func`` transforms (grad, vjp, jvp, vmap, jacrev, ...) and forward-mode dual tensors:
  the functional layer calls these functions directly (``transforms_active``).

Both are rare and off the hot path; the kernels keep everything else. The formulas follow
csrc/common/logit_math.h term by term (weights, smoothing, z-loss, soft-capping, ignored rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor

from ._common import accumulation_dtype, reduce_rows

__all__ = [
    "bce_with_logits",
    "cross_entropy",
    "cross_entropy_probs",
    "distillation",
    "is_batched",
    "needs_composite_backward",
    "recompute_vjp",
    "transforms_active",
]


def transforms_active(*tensors: Tensor | None) -> bool:
    """Whether a torch.func transform is running, or a tensor carries a forward-mode tangent:
    then the custom ops cannot give the right answer and the composites must run."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    if _fwad._current_level >= 0:
        for tensor in tensors:
            if tensor is not None and _fwad.unpack_dual(tensor).tangent is not None:
                return True
    return False


def recompute_vjp(
    forward: Callable[[], Sequence[Tensor]],
    wrt: Sequence[Tensor | None],
    grad_outputs: Sequence[Tensor | None],
) -> list[Tensor | None]:
    """Gradients of ``forward()``'s outputs with respect to ``wrt`` (None where an entry is None,
    does not require grad or is unused), for a backward called with ``create_graph=True``: the
    result is differentiable again, in the logits and the upstream gradients alike."""
    with torch.enable_grad():
        outputs = forward()
    pairs = [(out, g) for out, g in zip(outputs, grad_outputs, strict=True) if g is not None]
    targets = [t for t in wrt if t is not None and t.requires_grad]
    if not pairs or not targets:
        return [None] * len(wrt)
    grads = iter(
        torch.autograd.grad(
            [out for out, _ in pairs],
            targets,
            [g for _, g in pairs],
            create_graph=True,
            allow_unused=True,
        )
    )
    return [next(grads) if t is not None and t.requires_grad else None for t in wrt]


def capped(logits: Tensor, softcap: float) -> Tensor:
    """softcap * tanh(z / softcap) (softcap > 0), in the accumulation dtype."""
    z = logits.to(accumulation_dtype(logits.dtype))
    return softcap * torch.tanh(z / softcap) if softcap > 0 else z


def _log_softmax(logits: Tensor, softcap: float) -> tuple[Tensor, Tensor]:
    """(log-probabilities, lse) of the capped logits, in the accumulation dtype."""
    z = capped(logits, softcap)
    lse = torch.logsumexp(z, dim=-1)
    return z - lse.unsqueeze(-1), lse


def _add_z_loss(row_loss: Tensor, lse: Tensor, z_loss: float) -> Tensor:
    return row_loss + z_loss * lse * lse if z_loss > 0 else row_loss


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    """(loss, lse) of ``cross_entropy_forward``: logits [N, C], int64 target [N]."""
    log_probs, lse = _log_softmax(logits, softcap)
    num_classes = log_probs.shape[-1]
    valid = target != ignore_index
    # Out-of-range targets give NaN rows, as the kernels do when the range check is skipped.
    in_range = (target >= 0) & (target < num_classes)
    safe_target = torch.where(valid & in_range, target, torch.zeros_like(target))
    class_weight = None if weight is None else weight.to(lse.dtype)
    target_weight = (
        torch.ones_like(lse) if class_weight is None else class_weight.gather(0, safe_target)
    )
    target_weight = torch.where(valid, target_weight, torch.zeros_like(target_weight))
    nll = -log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    row = (1.0 - label_smoothing) * target_weight * nll
    if label_smoothing > 0:
        weighted = log_probs if class_weight is None else log_probs * class_weight
        row = row - label_smoothing / num_classes * weighted.sum(-1)
    row = torch.where(valid, _add_z_loss(row, lse, z_loss), torch.zeros_like(row))
    row = torch.where(valid & ~in_range, torch.full_like(row, math.nan), row)
    loss = reduce_rows(row, reduction, target_weight.sum())
    return loss.to(logits.dtype), lse


def cross_entropy_probs(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    """(loss, lse) of ``cross_entropy_probs_forward``: logits and probabilities [N, C]."""
    log_probs, lse = _log_softmax(logits, softcap)
    coef = (1.0 - label_smoothing) * target.to(lse.dtype) + label_smoothing / log_probs.shape[-1]
    if weight is not None:
        coef = coef * weight.to(lse.dtype)
    # A zero coefficient contributes nothing, even on a -inf logit (the kernels' rule).
    terms = torch.where(coef != 0, coef * log_probs, torch.zeros_like(log_probs))
    row = _add_z_loss(-terms.sum(-1), lse, z_loss)
    loss = reduce_rows(row, reduction, torch.tensor(float(lse.shape[0]), dtype=lse.dtype))
    return loss.to(logits.dtype), lse


def bce_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
) -> Tensor:
    """Loss of ``bce_with_logits_forward``: PyTorch's own composite, whose formula ours is."""
    acc = accumulation_dtype(input.dtype)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        input.to(acc),
        target.to(acc),
        weight=weight,
        pos_weight=pos_weight,
        reduction=reduction,
    )
    return loss.to(input.dtype)


def distillation(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    ignore_index: int,
    temperature: float,
    kind: str,
    beta: float,
    hard_weight: float,
    soft_weight: float,
    reduction: str,
) -> Tensor:
    """Loss of ``distillation_forward``: per row, soft_weight times the divergence (kind forward
    KL, reverse KL or jsd) at temperature T plus hard_weight times the cross-entropy at T = 1
    (a weight of 0 drops its term); reduction none, batchmean over the counted rows, or sum."""
    acc = accumulation_dtype(student.dtype)
    row = torch.zeros(student.shape[:-1], dtype=acc, device=student.device)
    if soft_weight != 0:
        log_q = torch.log_softmax(student.to(acc) / temperature, dim=-1)
        log_p = torch.log_softmax(teacher.to(acc) / temperature, dim=-1)
        p, q = log_p.exp(), log_q.exp()
        zero = torch.zeros_like(log_q)
        if kind == "forward":
            terms = torch.where(p > 0, p * (log_p - log_q), zero)
        elif kind == "reverse":
            terms = torch.where(q > 0, q * (log_q - log_p), zero)
        else:
            log_m = torch.logsumexp(
                torch.stack([log_p + math.log(beta), log_q + math.log1p(-beta)]), dim=0
            )
            terms = torch.where(p > 0, beta * p * (log_p - log_m), zero) + torch.where(
                q > 0, (1.0 - beta) * q * (log_q - log_m), zero
            )
        row = terms.sum(-1) if soft_weight == 1 else soft_weight * terms.sum(-1)
    if hard_weight != 0:
        log_probs = torch.log_softmax(student.to(acc), dim=-1)
        num_classes = log_probs.shape[-1]
        valid = target != ignore_index
        # Out-of-range targets give NaN rows, as the kernels do when the range check is skipped.
        in_range = (target >= 0) & (target < num_classes)
        safe_target = torch.where(valid & in_range, target, torch.zeros_like(target))
        nll = -log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        row = row + hard_weight * torch.where(in_range, nll, torch.full_like(nll, math.nan))
    if target is not None:
        counted = target != ignore_index
        row = torch.where(counted, row, torch.zeros_like(row))
        count = counted.sum().to(acc)
    else:
        count = torch.tensor(float(row.shape[0]), dtype=acc, device=row.device)
    return reduce_rows(row, reduction, count).to(student.dtype)


def is_batched(tensor: Tensor | None) -> bool:
    """A vmap-batched tensor (torch.func's, or the legacy vmap that gradcheck's batched-grad
    check and autograd.grad(is_grads_batched=True) use): its values cannot be read per call."""
    if tensor is None:
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(tensor):
        return True
    # The legacy vmap's BatchedTensor has no backend (Dense) key; its own key is not in the
    # Python DispatchKey enum. (A set lookup, about half the cost of printing the set.)
    return not torch._C._dispatch_keys(tensor).has(torch._C.DispatchKey.Dense)


def needs_composite_backward(*saved: Tensor | None, upstream: Sequence[Tensor | None] = ()) -> bool:
    """A backward must go through the composites when it builds a graph (create_graph=True)
    and a saved input is differentiable, or when its upstream gradients are vmap-batched
    (Jacobians, Hessians, batched gradients)."""
    if any(is_batched(g) for g in upstream):
        return True
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in saved)
