"""Autograd beyond the first-order backward, against torch (or the float64 oracles for options
torch lacks): gradients of probability targets, double backward (create_graph=True,
gradgradcheck), forward-mode AD and the torch.func transforms."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from reference import cross_entropy_reference, kl_div_reference, token_logprobs_reference

import logitops
import logitops.functional as LF

DT = torch.float64


def _data(rows=4, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, classes, generator=g, dtype=DT)
    index = torch.randint(0, classes, (rows,), generator=g)
    index[1] = -100
    probs = torch.softmax(torch.randn(rows, classes, generator=g, dtype=DT), -1)
    labels = torch.rand(rows, classes, generator=g, dtype=DT)
    teacher = torch.randn(rows, classes, generator=g, dtype=DT)
    weight = torch.rand(classes, generator=g, dtype=DT) + 0.5
    pos_weight = torch.rand(classes, generator=g, dtype=DT) + 0.5
    return x, index, probs, labels, teacher, weight, pos_weight


def _pairs():
    """(name, ours, theirs): functions of the logits only, everything else fixed."""
    x, index, probs, labels, teacher, weight, pos_weight = _data()
    out = []
    for reduction in ("mean", "sum", "none"):
        kw = dict(weight=weight, reduction=reduction, label_smoothing=0.2)
        out.append(
            (
                f"ce_index_{reduction}",
                lambda z, kw=kw: LF.cross_entropy(z, index, **kw),
                lambda z, kw=kw: F.cross_entropy(z, index, **kw),
            )
        )
        out.append(
            (
                f"ce_probs_{reduction}",
                lambda z, kw=kw: LF.cross_entropy(z, probs, **kw),
                lambda z, kw=kw: F.cross_entropy(z, probs, **kw),
            )
        )
        bkw = dict(weight=labels[0], pos_weight=pos_weight, reduction=reduction)
        out.append(
            (
                f"bce_{reduction}",
                lambda z, kw=bkw: LF.binary_cross_entropy_with_logits(z, labels, **kw),
                lambda z, kw=bkw: F.binary_cross_entropy_with_logits(z, labels, **kw),
            )
        )
    ours_opts = dict(z_loss=1e-2, softcap=3.0, label_smoothing=0.1)
    out.append(
        (
            "ce_index_zloss_softcap",
            lambda z: LF.cross_entropy(z, index, **ours_opts),
            lambda z: cross_entropy_reference(z, index, **ours_opts)[0],
        )
    )
    out.append(
        (
            "ce_lse",
            lambda z: LF.cross_entropy(z, index, return_lse=True)[1].sum(),
            lambda z: cross_entropy_reference(z, index)[1].sum(),
        )
    )
    for kind in ("forward", "reverse", "jsd"):
        out.append(
            (
                f"kl_{kind}",
                lambda z, kind=kind: LF.kl_div_with_logits(
                    z, teacher, temperature=1.5, kind=kind, beta=0.3, target=index
                ),
                lambda z, kind=kind: kl_div_reference(
                    z, teacher, temperature=1.5, kind=kind, beta=0.3, target=index
                ),
            )
        )
    out.append(
        (
            "kl_torch",
            lambda z: LF.kl_div_with_logits(z, teacher),
            lambda z: F.kl_div(
                F.log_softmax(z, -1),
                F.log_softmax(teacher, -1),
                reduction="batchmean",
                log_target=True,
            ),
        )
    )
    out.append(
        (
            "distillation",
            lambda z: LF.distillation_loss(z, teacher, index, temperature=2.0, alpha=0.3),
            lambda z: (
                0.3 * F.cross_entropy(z, index)
                + 0.7 * 4.0 * kl_div_reference(z, teacher, temperature=2.0, target=index)
            ),
        )
    )
    out.append(
        (
            "token_logprobs",
            lambda z: sum(LF.token_logprobs(z, index, temperature=0.8, return_entropy=True)),
            lambda z: sum(token_logprobs_reference(z, index, temperature=0.8)),
        )
    )
    return out


PAIRS = _pairs()
IDS = [name for name, _, _ in PAIRS]


def _x():
    return _data()[0].clone()


@pytest.mark.parametrize("name,ours,theirs", PAIRS, ids=IDS)
def test_double_backward_matches_torch(name, ours, theirs):
    results = []
    for fn in (ours, theirs):
        x = _x().requires_grad_()
        loss = fn(x)
        (g,) = torch.autograd.grad(loss.sum(), x, create_graph=True)
        assert g.grad_fn is not None
        (loss.sum() + 10 * (g**2).sum()).backward()
        results.append((loss.detach(), g.detach(), x.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name,ours,theirs", PAIRS, ids=IDS)
def test_gradgradcheck(name, ours, theirs):
    x = _x().requires_grad_()
    assert torch.autograd.gradcheck(ours, (x,))
    assert torch.autograd.gradgradcheck(ours, (x,))


@pytest.mark.parametrize("name,ours,theirs", PAIRS, ids=IDS)
def test_func_transforms_match_torch(name, ours, theirs):
    x = _x()
    v = torch.randn_like(x)

    def scalar(fn):
        return lambda z: fn(z).sum()

    def check(a, b, what):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"{what}: {m}")

    check(torch.func.grad(scalar(ours))(x), torch.func.grad(scalar(theirs))(x), "grad")
    out_a, vjp_a = torch.func.vjp(ours, x)
    out_b, vjp_b = torch.func.vjp(theirs, x)
    check(out_a, out_b, "vjp value")
    check(vjp_a(torch.ones_like(out_a))[0], vjp_b(torch.ones_like(out_b))[0], "vjp")
    jvp_a = torch.func.jvp(ours, (x,), (v,))[1]
    jvp_b = torch.func.jvp(theirs, (x,), (v,))[1]
    check(jvp_a, jvp_b, "jvp")
    assert jvp_b.abs().max() > 0  # a real tangent, so a zero one cannot pass
    check(torch.func.jacrev(ours)(x), torch.func.jacrev(theirs)(x), "jacrev")
    check(torch.func.jacfwd(ours)(x), torch.func.jacfwd(theirs)(x), "jacfwd")
    check(torch.func.hessian(scalar(ours))(x), torch.func.hessian(scalar(theirs))(x), "hessian")
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(ours(fwAD.make_dual(x, v))).tangent
        expected = fwAD.unpack_dual(theirs(fwAD.make_dual(x, v))).tangent
    assert tangent is not None
    check(tangent, expected, "forward AD")
    # A batch of problems: vmap over a leading dimension, and per-sample gradients.
    xs = torch.stack([x, x.flip(0), 2 * x])
    check(torch.vmap(ours)(xs), torch.vmap(theirs)(xs), "vmap")
    check(
        torch.vmap(torch.func.grad(scalar(ours)))(xs),
        torch.vmap(torch.func.grad(scalar(theirs)))(xs),
        "vmap(grad)",
    )


def test_per_sample_gradients_of_a_classifier():
    """Opacus-style per-sample gradients: vmap(grad) over samples of a linear classifier."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, 9, generator=g, dtype=DT)
    xs = torch.randn(6, 9, generator=g, dtype=DT)
    ys = torch.randint(0, 5, (6,), generator=g)

    def loss(fn, w, x, y):
        return fn((x @ w.T).unsqueeze(0), y.unsqueeze(0))

    ours = torch.vmap(
        torch.func.grad(lambda w, x, y: loss(LF.cross_entropy, w, x, y)), in_dims=(None, 0, 0)
    )(w, xs, ys)
    theirs = torch.vmap(
        torch.func.grad(lambda w, x, y: loss(F.cross_entropy, w, x, y)), in_dims=(None, 0, 0)
    )(w, xs, ys)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("use_weight", [False, True])
def test_probability_targets_get_gradients(reduction, smoothing, use_weight):
    x, _, probs, _, _, weight, _ = _data()
    kw = dict(reduction=reduction, label_smoothing=smoothing, weight=weight if use_weight else None)
    grads = []
    for fn in (LF.cross_entropy, F.cross_entropy):
        z = x.clone().requires_grad_()
        t = probs.clone().requires_grad_()
        loss = fn(z, t, **kw)
        upstream = torch.linspace(0.5, 2.0, loss.numel(), dtype=DT).reshape(loss.shape)
        (loss * upstream).sum().backward()
        grads.append((z.grad, t.grad))
    assert grads[0][1] is not None, "the probability target got no gradient"
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probability_target_gradient_in_low_precision(dtype):
    x, _, probs, _, _, _, _ = _data(rows=3, classes=50)
    z = x.to(dtype).requires_grad_()
    t = probs.to(dtype).requires_grad_()
    logitops.cross_entropy(z, t, softcap=2.0, z_loss=1e-3).backward()
    zr = x.clone().requires_grad_()
    tr = probs.clone().requires_grad_()
    cross_entropy_reference(zr, tr, softcap=2.0, z_loss=1e-3)[0].backward()
    assert t.grad.dtype == dtype
    tol = dict(rtol=2e-2, atol=2e-3) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t.grad.double(), tr.grad, **tol)
    torch.testing.assert_close(z.grad.double(), zr.grad, **tol)


def test_probability_target_double_backward_through_the_target():
    x, _, probs, _, _, _, _ = _data()
    results = []
    for fn in (LF.cross_entropy, F.cross_entropy):
        z = x.clone().requires_grad_()
        t = probs.clone().requires_grad_()
        loss = fn(z, t, label_smoothing=0.1)
        gz, gt = torch.autograd.grad(loss, (z, t), create_graph=True)
        ((gz * gt).sum() + (gt**2).sum()).backward()
        results.append((z.grad, t.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    z = x.clone().requires_grad_()
    t = probs.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: LF.cross_entropy(a, b), (z, t))


def test_bce_target_double_backward():
    x, _, _, labels, _, _, pos_weight = _data()
    z = x.clone().requires_grad_()
    y = labels.clone().requires_grad_()
    fn = lambda a, b: LF.binary_cross_entropy_with_logits(a, b, pos_weight=pos_weight)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (z, y))


def test_first_order_path_unchanged_without_create_graph():
    """Without create_graph the gradient comes from the kernels and carries no graph."""
    x, index, *_ = _data()
    z = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(LF.cross_entropy(z, index), z)
    assert g.grad_fn is None
    ref = torch.autograd.grad(
        F.cross_entropy(x.clone().requires_grad_(), index), z, allow_unused=True
    )
    assert ref == (None,)
