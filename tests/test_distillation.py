"""Distillation: divergences against log_softmax / kl_div compositions, the JSD endpoints,
ignored rows, the T^2-scaled loss, dispatcher checks and errors."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, DTYPES, assert_close
from reference import cross_entropy_reference, kl_div_reference

import logitops

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
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()
