"""BCE-with-logits: parity with the float64 oracle and torch, stability, dispatcher, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, DTYPES, assert_close
from reference import bce_with_logits_reference
from torch.utils._python_dispatch import TorchDispatchMode

import logitops

bce = logitops.binary_cross_entropy_with_logits
REDUCTIONS = ["mean", "sum", "none"]
SHAPES = [(7,), (33, 17), (4, 3, 5, 6), (1, 1), (3, 2050)]


def broadcast_args(shape, dtype, device, which):
    kwargs = {}
    if "weight" in which:
        # varies along the first dim and broadcasts along the others
        wshape = (shape[0],) + (1,) * (len(shape) - 1) if len(shape) > 1 else shape
        kwargs["weight"] = (torch.rand(wshape, dtype=torch.float64) + 0.5).to(dtype).to(device)
    if "pos_weight" in which:
        kwargs["pos_weight"] = (torch.rand(shape[-1], dtype=torch.float64) * 4).to(dtype)
        kwargs["pos_weight"] = kwargs["pos_weight"].to(device)
    return kwargs


def run_both(x, y, reduction, kwargs):
    xa = x.detach().clone().requires_grad_()
    xr = x.detach().double().requires_grad_()
    loss = bce(xa, y, reduction=reduction, **kwargs)
    ref = bce_with_logits_reference(
        xr,
        y.double(),
        reduction=reduction,
        **{k: v.double() for k, v in kwargs.items()},
    )
    upstream = torch.randn(ref.shape, dtype=torch.float64, device=x.device)
    loss.backward(upstream.to(loss.dtype))
    ref.backward(upstream)
    return loss, ref, xa.grad, xr.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(
    "which", [(), ("pos_weight",), ("weight",), ("weight", "pos_weight")], ids=str
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference(device, dtype, shape, which, reduction):
    x = (torch.randn(shape, dtype=torch.float64) * 4).to(dtype).to(device)
    y = torch.rand(shape, dtype=torch.float64).to(dtype).to(device)
    kwargs = broadcast_args(shape, dtype, device, which)
    loss, ref, grad, ref_grad = run_both(x, y, reduction, kwargs)
    assert loss.dtype == dtype and loss.shape == ref.shape
    assert_close(loss, ref, dtype, scale=10, what="loss")
    assert_close(grad, ref_grad, dtype, what="grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torch(device, dtype, reduction):
    x = torch.randn(64, 40, dtype=dtype, device=device) * 3
    y = torch.randint(0, 2, (64, 40), device=device).to(dtype)
    weight = torch.rand(40, dtype=dtype, device=device)
    pos_weight = torch.rand(40, dtype=dtype, device=device) * 3
    for kwargs in (
        {},
        {"weight": weight},
        {"pos_weight": pos_weight},
        {"weight": weight, "pos_weight": pos_weight},
    ):
        xa, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = bce(xa, y, reduction=reduction, **kwargs)
        theirs = F.binary_cross_entropy_with_logits(xt, y, reduction=reduction, **kwargs)
        upstream = torch.randn_like(theirs)
        ours.backward(upstream)
        theirs.backward(upstream)
        assert_close(ours, theirs, dtype, scale=10, what="loss")
        assert_close(xa.grad, xt.grad, dtype, what="grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_pos_weight", [False, True])
def test_extreme_logits_stay_finite(device, dtype, with_pos_weight):
    # pytorch#13773: NaN with pos_weight at logit -120
    big = 1e4  # fp16 too: 3 * 1e4 still fits below its max of 65504
    x = torch.tensor([[-big, -120.0, -30.0, 0.0, 30.0, 120.0, big]] * 2, dtype=dtype, device=device)
    y = torch.tensor([[0.0] * 7, [1.0] * 7], dtype=dtype, device=device)
    kwargs = (
        {"pos_weight": torch.full((7,), 3.0, dtype=dtype, device=device)} if with_pos_weight else {}
    )
    for reduction in ("none", "sum"):
        loss, ref, grad, ref_grad = run_both(x, y, reduction, kwargs)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert_close(loss, ref, dtype, scale=10, what="loss")
        assert_close(grad, ref_grad, dtype, what="grad")


@pytest.mark.parametrize("device", DEVICES)
def test_softplus_term_is_accurate_in_float32(device):
    """With target 1 the loss is softplus(-z) = log1p(exp(-|z|)) + max(-z, 0) alone, with no
    cancellation: float32 must stay within a few ulp of float64 over the whole range, tiny losses
    (large z, where log(1 + x) would lose every digit) included."""
    z = torch.cat([torch.linspace(-40, 40, 40001), torch.logspace(-8, 1.6, 4001)])
    z = torch.cat([z, -z]).to(device)
    ones = torch.ones_like(z)
    got = logitops.binary_cross_entropy_with_logits(z, ones, reduction="none").double()
    want = F.binary_cross_entropy_with_logits(z.double(), ones.double(), reduction="none")
    torch.testing.assert_close(got, want, rtol=5e-7, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_infinite_and_nan_logits_like_torch(device):
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 1.0], device=device)
    y = torch.tensor([0.0, 1.0, 0.5, 0.5], device=device)
    xa, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = bce(xa, y, reduction="none")
    theirs = F.binary_cross_entropy_with_logits(xt, y, reduction="none")
    torch.testing.assert_close(ours, theirs, equal_nan=True)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(xa.grad, xt.grad, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_input_like_torch(device):
    x = torch.randn(0, 5, device=device, requires_grad=True)
    y = torch.rand(0, 5, device=device)
    for reduction in REDUCTIONS:
        ours = bce(x, y, reduction=reduction)
        theirs = F.binary_cross_entropy_with_logits(x, y, reduction=reduction)
        torch.testing.assert_close(ours, theirs, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_target_gradient(device):
    x = torch.randn(5, 6, dtype=torch.float64, device=device)
    y = torch.rand(5, 6, dtype=torch.float64, device=device, requires_grad=True)
    pw = torch.rand(6, dtype=torch.float64, device=device) * 2
    w = torch.rand(5, 1, dtype=torch.float64, device=device)
    for reduction in REDUCTIONS:
        torch.autograd.gradcheck(
            lambda t, r=reduction: bce(x, t, weight=w, pos_weight=pw, reduction=r), (y,)
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(device, reduction):
    x = torch.randn(4, 7, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.rand(4, 7, dtype=torch.float64, device=device)
    pw = torch.rand(7, dtype=torch.float64, device=device) * 2
    torch.autograd.gradcheck(lambda t: bce(t, y, pos_weight=pw, reduction=reduction), (x,))


def test_broadcast_weight_is_not_materialized():
    # weight / pos_weight of shape [C] over a [R, C] input reach the kernel as stride-0 views.
    seen = {}

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.logitops.bce_with_logits_forward.default:
                seen["strides"] = (args[2].stride(), args[3].stride())
            return func(*args, **(kwargs or {}))

    with Recorder():
        bce(
            torch.randn(64, 32),
            torch.rand(64, 32),
            weight=torch.rand(32),
            pos_weight=torch.rand(32),
        )
    assert seen["strides"] == ((0, 1), (0, 1))


def test_cpu_reduction_independent_of_thread_count():
    x, y = torch.randn(301, 2000), torch.rand(301, 2000)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            xa = x.clone().requires_grad_()
            loss = bce(xa, y, pos_weight=torch.full((2000,), 2.0))
            loss.backward()
            results.append((loss, xa.grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    torch._dynamo.reset()

    def step(x, y, pw):
        return bce(x, y, pos_weight=pw) * 3

    compiled = torch.compile(step, fullgraph=True)
    x = torch.randn(8, 12, device=device)
    y = torch.rand(8, 12, device=device)
    pw = torch.rand(12, device=device)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager, comp = step(x1, y, pw), compiled(x2, y, pw)
    torch.testing.assert_close(comp, eager)
    eager.backward()
    comp.backward()
    torch.testing.assert_close(x2.grad, x1.grad)


def test_module_is_drop_in():
    pw, w = torch.rand(8), torch.rand(8)
    ours = logitops.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction="sum")
    theirs = torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction="sum")
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert isinstance(ours, torch.nn.BCEWithLogitsLoss)
    x, y = torch.randn(4, 8), torch.rand(4, 8)
    torch.testing.assert_close(ours(x, y), theirs(x, y))
    assert list(logitops.nn.BCEWithLogitsLoss().state_dict()) == list(
        torch.nn.BCEWithLogitsLoss().state_dict()
    )


def test_legacy_size_average_and_reduce():
    x, y = torch.randn(4, 6), torch.rand(4, 6)
    for size_average, reduce in ((False, None), (None, False), (True, True)):
        torch.testing.assert_close(
            bce(x, y, size_average=size_average, reduce=reduce),
            F.binary_cross_entropy_with_logits(x, y, size_average=size_average, reduce=reduce),
        )


X = torch.randn(4, 6)
Y = torch.rand(4, 6)

BAD_CALLS = [
    ("target", ValueError, lambda: bce(X, Y[:3])),
    ("target", TypeError, lambda: bce(X, Y.long())),
    ("input", TypeError, lambda: bce(X.long(), Y)),
    ("weight", ValueError, lambda: bce(X, Y, weight=torch.rand(5))),
    ("pos_weight", ValueError, lambda: bce(X, Y, pos_weight=torch.rand(4))),
    ("pos_weight", TypeError, lambda: bce(X, Y, pos_weight=torch.ones(6, dtype=torch.long))),
    ("reduction", ValueError, lambda: bce(X, Y, reduction="batchmean")),
    ("target", TypeError, lambda: bce(X, 1.0)),
    (
        "target",
        ValueError,
        lambda: torch.ops.logitops.bce_with_logits_forward(X, Y[:, :5], None, None, "mean", False),
    ),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()
