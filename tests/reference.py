"""Pure-PyTorch oracles, written from the documented semantics (see SEMANTICS in the README).

They compute in float64 with plain tensor ops and no logitops code, so a shared bug cannot hide.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy_reference(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[Tensor, Tensor]:
    """(loss, lse) in float64, differentiable with respect to `input`.

    Per element with logits z (capped: softcap * tanh(z / softcap)), lse = log sum_c exp(z_c):
      index target y:   (1 - eps) w_y (lse - z_y) + eps / C * sum_c w_c (lse - z_c) + z_loss lse^2,
                        0 where y == ignore_index; mean divides by sum of w_y over kept elements.
      probabilities t:  sum_c w_c q_c (lse - z_c) + z_loss lse^2, q = (1 - eps) t + eps / C;
                        mean divides by the number of elements.
    """
    x = input.double()
    if x.dim() == 1:
        x = x.unsqueeze(0)
        target = target.unsqueeze(0)
    else:
        x = x.movedim(1, -1)
        if target.is_floating_point():
            target = target.movedim(1, -1)
    num_classes = x.shape[-1]
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    lse = torch.logsumexp(x, dim=-1)
    w = torch.ones(num_classes, dtype=torch.float64) if weight is None else weight.double()
    w = w.to(x.device)
    eps = label_smoothing

    if target.is_floating_point():
        q = (1 - eps) * target.double() + eps / num_classes
        a = q * w
        # sum_c a_c (lse - z_c); an a_c of 0 contributes 0 even where z_c is -inf.
        per_class = torch.where(a != 0, a * (lse.unsqueeze(-1) - x), torch.zeros_like(x))
        loss = per_class.sum(-1) + z_loss * lse * lse
        denom = torch.tensor(float(loss.numel()), dtype=torch.float64)
    else:
        keep = target != ignore_index
        safe_target = torch.where(keep, target, torch.zeros_like(target))
        z_y = x.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
        w_y = w[safe_target] * keep
        nll = w_y * (lse - z_y)
        if eps > 0:
            smooth = (w * (lse.unsqueeze(-1) - x)).sum(-1)
            nll = (1 - eps) * nll + eps / num_classes * smooth
        loss = nll + z_loss * lse * lse
        loss = torch.where(keep, loss, torch.zeros_like(loss))
        denom = w_y.sum()

    if input.dim() == 1:
        loss, lse = loss.squeeze(0), lse.squeeze(0)
    if reduction == "none":
        return loss, lse
    if reduction == "sum":
        return loss.sum(), lse
    return loss.sum() / denom, lse


def bce_with_logits_reference(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """-w * [pos_weight * y * log(sigmoid(z)) + (1 - y) * log(1 - sigmoid(z))] in float64, with
    log(sigmoid(z)) = logsigmoid(z) and log(1 - sigmoid(z)) = logsigmoid(-z)."""
    z, y = input.double(), target.double()
    pw = 1.0 if pos_weight is None else pos_weight.double()
    loss = -(pw * y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z))
    if weight is not None:
        loss = loss * weight.double()
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean()
