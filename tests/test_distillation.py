"""Distillation: divergences against log_softmax / kl_div compositions, the JSD endpoints,
ignored rows, the T^2-scaled loss, dispatcher checks and errors."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, DTYPES, assert_close
from reference import cross_entropy_reference, kl_div_reference

import logitops
from logitops.ops import distillation as distill_ops
from logitops.ops._common import compute_grad

KINDS = [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.9)]


def make(rows, vocab, dtype, device, scale=3.0):
    s = (torch.randn(rows, vocab, dtype=torch.float64) * scale).to(dtype).to(device)
    t = (torch.randn(rows, vocab, dtype=torch.float64) * scale).to(dtype).to(device)
    return s, t


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,beta", KINDS)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_matches_composition(device, dtype, kind, beta, reduction):
    s, t = make(23, 517, dtype, device)
    target = torch.randint(0, 517, (23,), device=device)
    target[::5] = -100
    for temperature in (1.0, 2.5):
        x = s.detach().clone().requires_grad_()
        xr = s.detach().double().requires_grad_()
        kwargs = dict(
            temperature=temperature, kind=kind, beta=beta, target=target, reduction=reduction
        )
        loss = logitops.kl_div_with_logits(x, t, **kwargs)
        ref = kl_div_reference(xr, t.double(), **kwargs)
        upstream = torch.rand(ref.shape, dtype=torch.float64, device=device) + 0.5
        loss.backward(upstream.to(dtype))
        ref.backward(upstream)
        assert loss.dtype == dtype
        assert_close(loss, ref, dtype, scale=10, what="loss")
        assert_close(x.grad, xr.grad, dtype, what="grad")


@pytest.mark.parametrize("device", DEVICES)
def test_jsd_endpoints_are_the_kls_exactly(device):
    s, t = make(8, 100, torch.float32, device)
    fwd = logitops.kl_div_with_logits(s, t, kind="forward", temperature=1.7)
    rev = logitops.kl_div_with_logits(s, t, kind="reverse", temperature=1.7)
    assert torch.equal(
        logitops.kl_div_with_logits(s, t, kind="jsd", beta=0.0, temperature=1.7), fwd
    )
    assert torch.equal(
        logitops.kl_div_with_logits(s, t, kind="jsd", beta=1.0, temperature=1.7), rev
    )
    assert logitops.kl_div_with_logits(s, t, kind="jsd", beta=1e-3, temperature=1.7) < 0.05 * fwd


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_and_masked_logits(device):
    s, t = make(4, 64, torch.float32, device, scale=1.0)
    t[0, 5:] = -float("inf")  # teacher puts no mass there
    s[1] *= 1e3
    t[2] *= 1e3
    for kind, beta in KINDS:
        x = s.clone().requires_grad_()
        loss = logitops.kl_div_with_logits(x, t, kind=kind, beta=beta, reduction="none")
        loss.sum().backward()
        ref = kl_div_reference(s, t, kind=kind, beta=beta, reduction="none")
        assert torch.isfinite(loss[1:]).all() and torch.isfinite(x.grad[1:]).all()
        assert_close(loss[1:], ref[1:], torch.float32, scale=1e4, what=kind)
    loss = logitops.kl_div_with_logits(s[:1], t[:1], kind="forward")
    assert torch.isfinite(loss)


@pytest.mark.parametrize("device", DEVICES)
def test_all_rows_ignored_and_3d_inputs(device):
    s, t = make(6, 30, torch.float64, device)
    target = torch.full((6,), -100, device=device)
    assert torch.isnan(logitops.kl_div_with_logits(s, t, target=target))
    s3, t3 = s.reshape(2, 3, 30), t.reshape(2, 3, 30)
    out = logitops.kl_div_with_logits(s3, t3, reduction="none")
    assert out.shape == (2, 3)
    assert_close(out, kl_div_reference(s3, t3, reduction="none"), torch.float64, what="3d")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_target", [True, False])
def test_distillation_loss_formula(device, with_target):
    s, t = make(10, 40, torch.float64, device)
    target = torch.randint(0, 40, (10,), device=device) if with_target else None
    if with_target:
        target[3] = -100
    x = s.clone().requires_grad_()
    loss = logitops.distillation_loss(x, t, target, temperature=3.0, alpha=0.3)
    xr = s.clone().requires_grad_()
    soft = 9.0 * kl_div_reference(xr, t, temperature=3.0, target=target)
    expected = soft
    if with_target:
        expected = 0.3 * cross_entropy_reference(xr, target)[0] + 0.7 * soft
    loss.backward()
    expected.backward()
    assert_close(loss, expected, torch.float64, what="loss")
    assert_close(x.grad, xr.grad, torch.float64, what="grad")
    module = logitops.nn.DistillationLoss(temperature=3.0, alpha=0.3)
    assert_close(module(s, t, target), expected, torch.float64, what="module")
    assert list(module.state_dict()) == []


def distill_oracle(
    s, t, target, *, temperature, alpha, kind="forward", beta=0.5, ignore_index=-100
):
    """alpha * cross_entropy (mean over the non-ignored targets) + (1 - alpha) T^2 * divergence
    (batchmean over the same rows), in float64; the soft term alone without target."""
    soft = temperature**2 * kl_div_reference(
        s, t.double(), temperature=temperature, kind=kind, beta=beta, target=target,
        ignore_index=ignore_index,
    )  # fmt: skip
    if target is None:
        return soft
    vocab = s.shape[-1]
    hard = cross_entropy_reference(
        s.reshape(-1, vocab), target.reshape(-1), ignore_index=ignore_index
    )[0]
    return alpha * hard + (1 - alpha) * soft


FUSED_KINDS = [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,beta", FUSED_KINDS)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_distillation_loss_matches_oracle(device, dtype, kind, beta, alpha, temperature):
    s, t = make(13, 257, dtype, device)
    target = torch.randint(0, 257, (13,), device=device)
    target[::4] = -100
    x = s.detach().clone().requires_grad_()
    xr = s.detach().double().requires_grad_()
    options = dict(temperature=temperature, alpha=alpha, kind=kind, beta=beta)
    loss = logitops.distillation_loss(x, t, target, **options)
    ref = distill_oracle(xr, t, target, **options)
    loss.backward()
    ref.backward()
    assert loss.dtype == dtype and loss.shape == ()
    assert_close(loss, ref, dtype, scale=10, what="loss")
    assert_close(x.grad, xr.grad, dtype, what="grad")
    assert (x.grad[::4] == 0).all()  # ignored rows


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "vocab", [1, 7, pytest.param(32000, marks=pytest.mark.emulation_skip("slow"))]
)
@pytest.mark.parametrize("rows", [1, 3])
def test_fused_odd_shapes(device, vocab, rows):
    s, t = make(rows, vocab, torch.float32, device)
    target = torch.randint(0, vocab, (rows,), device=device)
    for temperature, alpha in ((2.0, 0.3), (1.0, 0.5)):
        x = s.detach().clone().requires_grad_()
        xr = s.detach().double().requires_grad_()
        options = dict(temperature=temperature, alpha=alpha)
        loss = logitops.distillation_loss(x, t, target, **options)
        ref = distill_oracle(xr, t, target, **options)
        (loss * 1.7).backward()  # an upstream other than 1
        (ref * 1.7).backward()
        assert_close(loss, ref, torch.float32, scale=10, what="loss")
        assert_close(x.grad, xr.grad, torch.float32, what="grad")


@pytest.mark.parametrize("device", DEVICES)
def test_fused_3d_without_target_and_all_ignored(device):
    s, t = make(6, 30, torch.float64, device)
    s3, t3 = s.reshape(2, 3, 30), t.reshape(2, 3, 30)
    target = torch.randint(0, 30, (2, 3), device=device)
    target[1, 1] = -100
    for y in (target, None):
        x = s3.clone().requires_grad_()
        xr = s3.clone().requires_grad_()
        loss = logitops.distillation_loss(x, t3, y, temperature=2.0, alpha=0.4)
        ref = distill_oracle(xr, t3, y, temperature=2.0, alpha=0.4)
        loss.backward()
        ref.backward()
        assert_close(loss, ref, torch.float64, what="loss")
        assert_close(x.grad, xr.grad, torch.float64, what="grad")
    # A mean over no rows: NaN (cross_entropy's and kl's both), and a gradient of zeros.
    x = s.clone().requires_grad_()
    loss = logitops.distillation_loss(x, t, torch.full((6,), -100, device=device), alpha=0.5)
    loss.backward()
    assert torch.isnan(loss) and (x.grad == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,beta", FUSED_KINDS)
def test_fused_nan_and_masked_rows(device, kind, beta):
    s, t = make(4, 64, torch.float32, device, scale=1.0)
    target = torch.tensor([3, 5, 7, 9], device=device)
    s[0, 2] = float("nan")  # a NaN student row: its loss and gradient are NaN
    s[1, 40:] = t[1, 40:] = -float("inf")  # masked vocabulary (the target is not there)
    t[2, 10:] -= 80.0  # the teacher puts (next to) no mass there
    x = s.clone().requires_grad_()
    loss = logitops.distillation_loss(
        x, t, target, alpha=0.3, temperature=2.0, kind=kind, beta=beta
    )
    loss.backward()
    assert torch.isnan(loss)
    assert torch.isnan(x.grad[0]).all() and torch.isfinite(x.grad[1:]).all()
    assert (x.grad[1, 40:] == 0).all()
    rows = logitops.distillation_loss(s[1:3], t[1:3], target[1:3], alpha=0.3, kind=kind, beta=beta)
    assert torch.isfinite(rows)
    # (F.kl_div's 0 * (-inf - -inf) = NaN on the masked columns rules the oracle out for row 1.)
    rest = s[3:].clone().requires_grad_()
    loss = logitops.distillation_loss(rest, t[3:], target[3:], alpha=0.3, kind=kind, beta=beta)
    ref_x = s[3:].double().requires_grad_()
    ref = distill_oracle(ref_x, t[3:], target[3:], temperature=2.0, alpha=0.3, kind=kind, beta=beta)
    loss.backward()
    ref.backward()
    assert_close(loss, ref, torch.float32, scale=10, what="loss")
    assert_close(rest.grad, ref_x.grad, torch.float32, what="grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,beta", FUSED_KINDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
@pytest.mark.parametrize("hard,soft", [(0.4, 2.4), (1.0, 0.0), (0.0, 1.0)])
def test_op_weights_and_reductions(device, kind, beta, reduction, hard, soft):
    # The op itself: per row soft * divergence(T) + hard * cross-entropy(T = 1), every reduction,
    # per-row upstreams for none.
    s, t = make(7, 33, torch.float32, device)
    target = torch.randint(0, 33, (7,), device=device)
    target[2] = -100
    x = s.clone().requires_grad_()
    loss, count, _ = distill_ops.distillation_forward(
        x, t, target, -100, 1.5, kind, beta, hard, soft, reduction, compute_grad(x, reduction)
    )
    xr = s.double().requires_grad_()
    rows = (
        soft
        * kl_div_reference(
            xr, t.double(), temperature=1.5, kind=kind, beta=beta, target=target, reduction="none"
        )
        + hard * cross_entropy_reference(xr, target, reduction="none")[0]
    )
    ref = {"none": rows, "sum": rows.sum(), "batchmean": rows.sum() / 6}[reduction]
    upstream = torch.rand(ref.shape, dtype=torch.float64, device=device) + 0.5
    loss.backward(upstream.float())
    ref.backward(upstream)
    assert count.item() == 6
    assert_close(loss, ref, torch.float32, scale=10, what="loss")
    assert_close(x.grad, xr.grad, torch.float32, what="grad")


@pytest.mark.parametrize("device", DEVICES)
def test_op_without_hard_term_is_the_divergence_bit_for_bit(device):
    # hard_weight 0, soft_weight 1: exactly kl_div_with_logits (the same kernels' path).
    s, t = make(5, 300, torch.float32, device)
    target = torch.tensor([0, -100, 2, 3, 4], device=device)
    for kind, beta in FUSED_KINDS:
        for temperature in (1.0, 1.3):
            x1, x2 = s.clone().requires_grad_(), s.clone().requires_grad_()
            kl = logitops.kl_div_with_logits(
                x1, t, temperature=temperature, kind=kind, beta=beta, target=target
            )
            loss, _, _ = distill_ops.distillation_forward(
                x2, t, target, -100, temperature, kind, beta, 0.0, 1.0, "batchmean",
                compute_grad(x2, "batchmean"),
            )  # fmt: skip
            kl.backward()
            loss.backward()
            assert torch.equal(kl, loss) and torch.equal(x1.grad, x2.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_equals_the_two_term_composition(device):
    # The fused loss against the unfused sum of logitops' own two losses (fp32, close).
    s, t = make(9, 500, torch.float32, device)
    target = torch.randint(0, 500, (9,), device=device)
    target[4] = -100
    x1, x2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    fused_loss = logitops.distillation_loss(x1, t, target, temperature=2.0, alpha=0.3)
    unfused = 0.3 * logitops.cross_entropy(x2, target) + 0.7 * 4.0 * logitops.kl_div_with_logits(
        x2, t, temperature=2.0, target=target
    )
    fused_loss.backward()
    unfused.backward()
    torch.testing.assert_close(fused_loss, unfused, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_retained_graph_and_double_backward(device):
    s, t = make(4, 20, torch.float64, device)
    target = torch.tensor([1, 2, -100, 19], device=device)
    x = s.clone().requires_grad_()
    loss = logitops.distillation_loss(x, t, target, temperature=2.0, alpha=0.3)
    (g1,) = torch.autograd.grad(loss * 2.0, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, retain_graph=True)
    assert_close(g1, 2.0 * g2, torch.float64, what="retained")
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (hvp,) = torch.autograd.grad(g.sum(), x)
    xr = s.clone().requires_grad_()
    ref = distill_oracle(xr, t, target, temperature=2.0, alpha=0.3)
    (gr,) = torch.autograd.grad(ref, xr, create_graph=True)
    (hvp_ref,) = torch.autograd.grad(gr.sum(), xr)
    assert_close(hvp, hvp_ref, torch.float64, what="hvp")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,beta", KINDS)
def test_gradcheck(device, kind, beta):
    s, t = make(4, 9, torch.float64, device, scale=1.0)
    target = torch.tensor([1, -100, 3, 4], device=device)
    torch.autograd.gradcheck(
        lambda x: logitops.kl_div_with_logits(
            x, t, kind=kind, beta=beta, temperature=1.3, target=target, reduction="none"
        ),
        (s.clone().requires_grad_(),),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    torch._dynamo.reset()

    def step(s, t, y):
        return logitops.distillation_loss(s, t, y, temperature=2.0, alpha=0.5, kind="jsd")

    compiled = torch.compile(step, fullgraph=True)
    s, t = make(6, 50, torch.float32, device)
    y = torch.randint(0, 50, (6,), device=device)
    x1, x2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    eager, comp = step(x1, t, y), compiled(x2, t, y)
    torch.testing.assert_close(comp, eager)
    eager.backward()
    comp.backward()
    torch.testing.assert_close(x2.grad, x1.grad)


def test_teacher_gets_no_gradient():
    s, t = make(3, 10, torch.float32, "cpu")
    t.requires_grad_()
    logitops.kl_div_with_logits(s.requires_grad_(), t).backward()
    assert t.grad is None and s.grad is not None


S, T = torch.randn(4, 10), torch.randn(4, 10)

BAD_CALLS = [
    ("teacher_logits", ValueError, lambda: logitops.kl_div_with_logits(S, T[:, :9])),
    ("student_logits", TypeError, lambda: logitops.kl_div_with_logits(S.long(), T)),
    ("temperature", ValueError, lambda: logitops.kl_div_with_logits(S, T, temperature=0.0)),
    ("kind", ValueError, lambda: logitops.kl_div_with_logits(S, T, kind="tvd")),
    ("beta", ValueError, lambda: logitops.kl_div_with_logits(S, T, kind="jsd", beta=1.5)),
    ("reduction", ValueError, lambda: logitops.kl_div_with_logits(S, T, reduction="mean")),
    (
        "target",
        ValueError,
        lambda: logitops.kl_div_with_logits(S, T, target=torch.zeros(3, dtype=torch.long)),
    ),
    ("target", TypeError, lambda: logitops.kl_div_with_logits(S, T, target=torch.zeros(4))),
    ("alpha", ValueError, lambda: logitops.distillation_loss(S, T, alpha=2.0)),
    (
        "target",
        IndexError,
        lambda: logitops.distillation_loss(S, T, torch.tensor([0, 1, 10, 2]), alpha=0.5),
    ),
    (
        "target",
        IndexError,
        lambda: logitops.distillation_loss(S, T, torch.tensor([0, -1, 1, 2]), alpha=0.0),
    ),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()
