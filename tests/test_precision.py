"""float32 results at least as accurate as torch's own float32 on the same input, per row,
against the float64 value: no digits lost to cancellation (rows of logits near their
log-sum-exp, wide vocabularies, sums of 128K terms)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

import logitops

EPS32 = torch.finfo(torch.float32).eps


def _assert_not_worse_than_torch(ours, theirs, exact, what):
    """Per element: |ours - exact| <= 2 |torch - exact| + 4 eps |exact| (rounding the result
    itself costs half an ulp; the factor 2 leaves room for a different summation order)."""
    ours, theirs, exact = ours.double().cpu(), theirs.double().cpu(), exact.double().cpu()
    our_error = (ours - exact).abs()
    bound = 2 * (theirs - exact).abs() + 4 * EPS32 * exact.abs()
    worst = int((our_error - bound).argmax())
    assert bool((our_error <= bound).all()), (
        f"{what}: element {worst}: ours {ours[worst].item()!r}, torch {theirs[worst].item()!r}, "
        f"float64 {exact[worst].item()!r}"
    )


def _wide_logits(device, vocab=131072):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, vocab, generator=g) * 30
    x[1, :] = -1e4  # every logit next to the lse: lse - z_target cancels
    x[2, :] = torch.randn(vocab, generator=g) * 1e-3 + 5e3
    return x.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("use_weight", [False, True])
def test_cross_entropy_index_float32_as_accurate_as_torch(device, label_smoothing, use_weight):
    x = _wide_logits(device)
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, x.shape[1], (4,), generator=g).to(device)
    weight = (torch.rand(x.shape[1], generator=g) + 0.5).to(device) if use_weight else None
    kw = dict(reduction="none", label_smoothing=label_smoothing, weight=weight)
    exact = F.cross_entropy(
        x.double(), target, **{**kw, "weight": None if weight is None else weight.double()}
    )
    _assert_not_worse_than_torch(
        logitops.cross_entropy(x, target, **kw), F.cross_entropy(x, target, **kw), exact, "CE"
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_probs_float32_as_accurate_as_torch(device, label_smoothing):
    x = _wide_logits(device)
    g = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(x.shape, generator=g), -1).to(device)
    kw = dict(reduction="none", label_smoothing=label_smoothing)
    exact = F.cross_entropy(x.double(), probs.double(), **kw)
    _assert_not_worse_than_torch(
        logitops.cross_entropy(x, probs, **kw), F.cross_entropy(x, probs, **kw), exact, "CE probs"
    )


def _torch_divergence(student, teacher, kind, beta):
    log_q, log_p = F.log_softmax(student, -1), F.log_softmax(teacher, -1)

    def kl(log_a, log_b):  # KL(A || B) per row
        return F.kl_div(log_b, log_a, log_target=True, reduction="none").sum(-1)

    if kind == "forward":
        return kl(log_p, log_q)
    if kind == "reverse":
        return kl(log_q, log_p)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log1p(-beta)]), 0)
    return beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab", [1271, 32000, 128256])
@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_divergences_float32_as_accurate_as_torch(device, vocab, kind):
    g = torch.Generator().manual_seed(vocab)
    rows = 32 if vocab < 100000 else 4
    student = torch.randn(rows, vocab, generator=g).to(device)
    teacher = (torch.randn(rows, vocab, generator=g) * 2).to(device)
    teacher[0] += 3e3  # a large common offset: the lse of each row is far from 0
    student[0] -= 3e3
    ours = logitops.kl_div_with_logits(student, teacher, kind=kind, beta=0.3, reduction="none")
    theirs = _torch_divergence(student, teacher, kind, 0.3)
    exact = _torch_divergence(student.double(), teacher.double(), kind, 0.3)
    _assert_not_worse_than_torch(ours, theirs, exact, f"{kind} KL")
