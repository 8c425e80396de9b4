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


# --- Calibration (logitops.calibration) ------------------------------------------------------


def calibration_probabilities_reference(logits: Tensor, from_logits: bool = True) -> Tensor:
    """Class probabilities [N, C] in float64: the softmax in the accumulation dtype (float32 for
    half and float32 inputs); binary (N,) logits give the two columns [1 - p, p], p = sigmoid."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    if logits.dim() == 1:
        p = (torch.sigmoid(x) if from_logits else x).double()
        return torch.stack([1 - p, p], 1)
    return (torch.softmax(x, dim=1) if from_logits else x).double()


def top_label_reference(logits: Tensor, labels: Tensor, from_logits: bool = True):
    """(confidence, correct) per row: multi-class the top softmax probability and whether its
    (first) class is the label; binary max(p, 1 - p) and whether (p >= 0.5) is the label."""
    probs = calibration_probabilities_reference(logits, from_logits)
    if logits.dim() == 1:
        p = probs[:, 1]
        return torch.maximum(p, 1 - p), (p >= 0.5).long() == labels.long()
    confidence, prediction = probs.max(dim=1)
    return confidence, prediction == labels


def uniform_bin_masks(values: Tensor, n_bins: int) -> list[Tensor]:
    """Bin k = (k / n_bins, (k + 1) / n_bins]; the first bin also holds 0."""
    masks = []
    for k in range(n_bins):
        mask = (values > k / n_bins) & (values <= (k + 1) / n_bins)
        if k == 0:
            mask |= values == 0
        masks.append(mask)
    return masks


def adaptive_bin_masks(values: Tensor, n_bins: int) -> list[Tensor]:
    """Equal-mass bins: the value of rank r (stable ascending sort) goes to bin r * n_bins // N."""
    n = values.numel()
    order = sorted(range(n), key=lambda i: (float(values[i]), i))
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(n_bins)]
    for rank, i in enumerate(order):
        masks[rank * n_bins // n][i] = True
    return masks


def binned_calibration_error_reference(
    confidence: Tensor, hit: Tensor, masks: list[Tensor], norm: str
) -> Tensor:
    """ECE (l1), MCE (max) or RMS (l2) over the given bins, one bin at a time."""
    total = confidence.numel()
    ece = mce = mse = torch.zeros((), dtype=torch.float64)
    for mask in masks:
        n = int(mask.sum())
        if n == 0:
            continue
        gap = (hit[mask].double().mean() - confidence[mask].double().mean()).abs()
        ece = ece + n / total * gap
        mse = mse + n / total * gap**2
        mce = torch.maximum(mce, gap)
    return {"l1": ece, "max": mce, "l2": mse.sqrt()}[norm]


def brier_decomposition_reference(probs: Tensor, labels: Tensor, n_bins: int) -> dict:
    """Sum over the columns c of probs [N, G] (labels [N] in [0, G)) of the Murphy terms over
    equal-width bins of p_c, with the within-bin variance and covariance of Stephenson et al."""
    terms = dict(reliability=0.0, resolution=0.0, uncertainty=0.0, variance=0.0, covariance=0.0)
    n = probs.shape[0]
    for c in range(probs.shape[1]):
        p, y = probs[:, c].double(), (labels == c).double()
        base = float(y.mean())
        terms["uncertainty"] += base * (1 - base)
        for mask in uniform_bin_masks(p, n_bins):
            k = int(mask.sum())
            if k == 0:
                continue
            pb, yb = p[mask], y[mask]
            mean_p, freq = float(pb.mean()), float(yb.mean())
            terms["reliability"] += k * (mean_p - freq) ** 2 / n
            terms["resolution"] += k * (freq - base) ** 2 / n
            terms["variance"] += float(((pb - mean_p) ** 2).sum()) / n
            terms["covariance"] += float(((pb - mean_p) * (yb - freq)).sum()) / n
    return terms


def token_logprobs_reference(logits, target, *, temperature=1.0, ignore_index=-100):
    """(logprob, entropy) per row in float64, differentiable: log_softmax(logits / T) at the
    target and -sum p log p of softmax(logits / T) (a p of 0 adds 0); ignored rows give 0."""
    log_p = F.log_softmax(logits.double() / temperature, dim=-1)
    keep = target != ignore_index
    index = torch.where(keep, target, torch.zeros_like(target)).unsqueeze(-1)
    logprob = log_p.gather(-1, index).squeeze(-1)
    p = log_p.exp()
    entropy = -(p * log_p.masked_fill(p == 0, 0.0)).sum(-1)
    zero = torch.zeros_like(logprob)
    return torch.where(keep, logprob, zero), torch.where(keep, entropy, zero)


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
