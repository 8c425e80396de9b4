"""Pure-PyTorch oracles, written from the documented semantics (the README's family sections).

They compute in float64 with plain tensor ops and no logitops code, so a shared bug cannot hide.
"""

from __future__ import annotations

import math

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


# --- transformers' warpers, restated (sort-based), applied one row at a time -----------------


def hf_top_k(scores: Tensor, top_k: int, filter_value=-float("inf"), min_tokens_to_keep=1):
    """TopKLogitsWarper: remove scores below the k-th largest (ties with it are kept)."""
    top_k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
    kth = torch.topk(scores, top_k)[0][..., -1, None]
    return scores.masked_fill(scores < kth, filter_value)


def hf_top_p(scores: Tensor, top_p: float, filter_value=-float("inf"), min_tokens_to_keep=1):
    """TopPLogitsWarper: sort ascending, remove where the cumulative probability <= 1 - p."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -min_tokens_to_keep:] = False
    remove = remove.scatter(-1, sorted_indices, remove)
    return scores.masked_fill(remove, filter_value)


def hf_min_p(scores: Tensor, min_p: float, filter_value=-float("inf"), min_tokens_to_keep=1):
    """MinPLogitsWarper: remove probabilities below min_p times the largest one."""
    probs = torch.softmax(scores, dim=-1)
    remove = probs < min_p * probs.max(dim=-1, keepdim=True)[0]
    sorted_indices = torch.argsort(scores, descending=True, dim=-1)
    sorted_remove = torch.gather(remove, -1, sorted_indices)
    sorted_remove[..., :min_tokens_to_keep] = False
    remove = sorted_remove.scatter(-1, sorted_indices, sorted_remove)
    return scores.masked_fill(remove, filter_value)


def filter_reference(
    scores: Tensor,
    *,
    temperature=None,
    top_k=None,
    top_p=None,
    min_p=None,
    order="hf",
    min_tokens_to_keep=1,
) -> tuple[Tensor, Tensor]:
    """The warper chain of one row (1-D scores) in the given order.

    hf: temperature -> top-k -> top-p -> min-p; vllm: temperature -> min-p -> top-k -> top-p;
    joint: each filter on the temperature-scaled scores, masks intersected. Returns the keep
    mask and the mask of tokens on a top-p / min-p cut within float rounding (see
    top_p_ambiguous), which tests leave out of exact comparisons."""
    if temperature is not None:
        scores = scores / temperature
    steps = {"top_k": (hf_top_k, top_k), "top_p": (hf_top_p, top_p), "min_p": (hf_min_p, min_p)}
    names = {
        "hf": ["top_k", "top_p", "min_p"],
        "vllm": ["min_p", "top_k", "top_p"],
        "joint": ["top_k", "top_p", "min_p"],
    }[order]
    keep = scores > -float("inf")
    ambiguous = torch.zeros_like(keep)
    current = scores
    for name in names:
        fn, value = steps[name]
        if value is None:
            continue
        source = scores if order == "joint" else current
        if name == "top_p":
            ambiguous |= top_p_ambiguous(source, value)
        if name == "min_p":
            ratio = torch.softmax(source.double(), -1) / torch.softmax(source.double(), -1).max()
            ambiguous |= (ratio - value).abs() <= 2.0**-18 * value
        filtered = fn(source, value, min_tokens_to_keep=min_tokens_to_keep)
        # logitops keeps a group of equal values together where a cut falls inside it; HF's
        # sort-based warpers split it in whatever order the sort left the group.
        survivors = filtered > -float("inf")
        if survivors.any():
            survivors |= (source == source[survivors].min()) & (source > -float("inf"))
            filtered = source.masked_fill(~survivors, -float("inf"))
        keep &= survivors
        if order != "joint":
            current = filtered
    return keep, ambiguous


def top_p_ambiguous(scores: Tensor, top_p: float, slack: float = 2.0**-20) -> Tensor:
    """Tokens whose ascending cumulative probability lies within `slack` (relative) of the cut:
    there, float rounding decides, and an implementation may go either way."""
    sorted_logits, sorted_indices = torch.sort(scores.double(), descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    near = (cumulative - (1 - top_p)).abs() <= slack * 4
    return near.scatter(-1, sorted_indices, near)


def kl_div_reference(
    student,
    teacher,
    *,
    temperature=1.0,
    kind="forward",
    beta=0.5,
    target=None,
    ignore_index=-100,
    reduction="batchmean",
    dtype=torch.float64,
):
    """Distillation divergences from log_softmax and F.kl_div in float64 (see logitops'
    kl_div_with_logits for the definitions); rows are the flattened leading dimensions.
    dtype=None computes in the inputs' own dtype: the PyTorch composition that
    benchmarks/bench_distillation.py times against logitops."""
    vocab = student.shape[-1]
    if dtype is not None:
        student, teacher = student.to(dtype), teacher.to(dtype)
    lq = F.log_softmax(student.reshape(-1, vocab) / temperature, -1)
    lp = F.log_softmax(teacher.reshape(-1, vocab) / temperature, -1)

    def kl(log_a, log_b):  # KL(A || B) per row
        return F.kl_div(log_b, log_a, log_target=True, reduction="none").sum(-1)

    if kind == "forward" or (kind == "jsd" and beta == 0):
        rows = kl(lp, lq)
    elif kind == "reverse" or (kind == "jsd" and beta == 1):
        rows = kl(lq, lp)
    else:
        lm = torch.logsumexp(torch.stack([lp + math.log(beta), lq + math.log(1 - beta)]), 0)
        rows = beta * kl(lp, lm) + (1 - beta) * kl(lq, lm)
    keep = torch.ones_like(rows, dtype=torch.bool)
    if target is not None:
        keep = target.reshape(-1) != ignore_index
    rows = torch.where(keep, rows, torch.zeros_like(rows))
    if reduction == "none":
        return rows.reshape(student.shape[:-1])
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / keep.sum()


def causal_lm_loss_reference(
    logits: Tensor,
    labels: Tensor,
    num_items_in_batch=None,
    ignore_index: int = -100,
    shift_labels: Tensor | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    """transformers' ForCausalLMLoss in float64 (logits [..., T, V], labels [..., T]): position t
    predicts labels[t + 1], the last position nothing (or shift_labels as given); the mean over
    non-ignored tokens, or their sum divided by num_items_in_batch."""
    if shift_labels is None:
        shift_labels = torch.cat(
            [labels[..., 1:], torch.full_like(labels[..., :1], ignore_index)], dim=-1
        )
    x = logits.double().reshape(-1, logits.shape[-1])
    t = shift_labels.reshape(-1)
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss, _ = cross_entropy_reference(
        x, t, None, ignore_index, reduction, label_smoothing, z_loss, softcap
    )
    return loss if num_items_in_batch is None else loss / num_items_in_batch
