"""Fused linear + cross-entropy: parity of the loss and all three gradients with the unfused
step and with torch's F.linear_cross_entropy, every option, and its memory bound."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, TOLERANCES
from reference import cross_entropy_reference

import logitops

OPTIONS = [
    {},
    {"label_smoothing": 0.1, "weight": True},
    {"z_loss": 1e-3, "softcap": 5.0},
    {"ignore_index": 3},
]


def make(device, dtype, tokens=37, hidden=16, vocab=50, bias=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=g, dtype=torch.float64).to(dtype).to(device)
    w = (torch.randn(vocab, hidden, generator=g, dtype=torch.float64) / 4).to(dtype).to(device)
    b = torch.randn(vocab, generator=g, dtype=torch.float64).to(dtype).to(device) if bias else None
    t = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    t[::7] = -100
    return x, w, b, t


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [1, 8, None])
def test_matches_unfused_reference(device, dtype, options, reduction, chunk_size):
    x, w, b, t = make(device, dtype)
    kwargs = dict(options)
    if kwargs.pop("weight", False):
        kwargs["weight"] = torch.rand(50, dtype=dtype, device=device) + 0.5
    if "ignore_index" in kwargs:
        t = torch.where(t == -100, torch.full_like(t, kwargs["ignore_index"]), t)
    leaves = [v.clone().requires_grad_() for v in (x, w, b)]
    loss = logitops.linear_cross_entropy(
        leaves[0],
        leaves[1],
        t,
        linear_bias=leaves[2],
        reduction=reduction,
        chunk_size=chunk_size,
        **kwargs,
    )
    refs = [v.double().clone().requires_grad_() for v in (x, w, b)]
    ref_kwargs = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
    ref, _ = cross_entropy_reference(
        refs[0] @ refs[1].T + refs[2], t, reduction=reduction, **ref_kwargs
    )
    upstream = torch.rand(ref.shape, dtype=torch.float64, device=device) + 0.5
    grads = torch.autograd.grad(loss, leaves, upstream.to(dtype))
    ref_grads = torch.autograd.grad(ref, refs, upstream)
    rtol, atol = TOLERANCES[dtype]
    # Half-precision matmuls round the logits once more than the oracle.
    scale = {torch.bfloat16: 4, torch.float16: 2}.get(dtype, 1)
    torch.testing.assert_close(loss.double(), ref, rtol=rtol * 10 * scale, atol=atol * 100)
    for name, got, want in zip(("input", "weight", "bias"), grads, ref_grads, strict=True):
        torch.testing.assert_close(
            got.double(),
            want,
            rtol=rtol * 10 * scale,
            atol=atol * 100 * scale,
            msg=lambda m, n=name: f"{n}: {m}",
        )


@pytest.mark.skipif(not hasattr(F, "linear_cross_entropy"), reason="torch without it")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch_linear_cross_entropy(device, reduction):
    x, w, b, t = make(device, torch.float64)
    weight = torch.rand(50, dtype=torch.float64, device=device)
    ours = logitops.linear_cross_entropy(
        x,
        w,
        t,
        linear_bias=b,
        weight=weight,
        reduction=reduction,
        label_smoothing=0.2,
        chunk_size=5,
    )
    theirs = F.linear_cross_entropy(
        x,
        w,
        t,
        linear_bias=b,
        weight=weight,
        reduction=reduction,
        ignore_index=-100,
        label_smoothing=0.2,
    )
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_and_module(device):
    x, w, b, t = make(device, torch.float32, tokens=24)
    x3, t3 = x.reshape(2, 12, 16), t.reshape(2, 12)
    out = logitops.linear_cross_entropy(x3, w, t3, reduction="none")
    assert out.shape == (2, 12)
    module = logitops.nn.LinearCrossEntropyLoss(ignore_index=-100, chunk_size=7)
    torch.testing.assert_close(module(x, w, t, b), F.cross_entropy(x @ w.T + b, t))
    assert list(module.state_dict()) == []


@pytest.mark.parametrize("device", DEVICES)
def test_all_ignored_is_nan_like_torch(device):
    x, w, b, t = make(device, torch.float32)
    t[:] = -100
    assert torch.isnan(logitops.linear_cross_entropy(x, w, t))


@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_mean_does_not_overflow(device):
    """8192 rows of loss ~8.3 sum past fp16's 65504 in one default chunk: the sum must be kept
    in float32, and the mean's 1 / N must not underflow the gradients."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 8, generator=g).to(torch.float16).to(device).requires_grad_()
    w = torch.randn(4096, 8, generator=g).to(torch.float16).to(device).requires_grad_()
    t = torch.randint(0, 4096, (8192,), generator=g).to(device)
    loss = logitops.linear_cross_entropy(x, w, t)
    loss.backward()
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.cross_entropy(xd @ wd.T, t)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=2e-3, atol=0)
    for got, want in ((x.grad, xd.grad), (w.grad, wd.grad)):
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph_dynamic(device, reduction):
    """One graph (the chunk loop is inside the op, so the token count never specializes it),
    the same loss and gradients as eager, for two token counts."""
    torch._dynamo.reset()

    def step(x, w, b, t):
        loss = logitops.linear_cross_entropy(
            x, w, t, linear_bias=b, chunk_size=8, reduction=reduction, label_smoothing=0.1
        )
        return loss.sum()

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for tokens in (37, 50):
        x, w, b, t = make(device, torch.float32, tokens=tokens)
        eager_leaves = [v.clone().requires_grad_() for v in (x, w, b)]
        comp_leaves = [v.clone().requires_grad_() for v in (x, w, b)]
        eager = step(*eager_leaves, t)
        comp = compiled(*comp_leaves, t)
        torch.testing.assert_close(comp, eager)
        eager.backward()
        comp.backward()
        for e, c in zip(eager_leaves, comp_leaves, strict=True):
            torch.testing.assert_close(c.grad, e.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph_under_autocast(device, reduction):
    """torch.compile(fullgraph=True) of a step under autocast: the float32_logits overload, the
    same loss (float32) and gradients as eager."""
    torch._dynamo.reset()

    def step(x, w, b, t):
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = logitops.linear_cross_entropy(
                x, w, t, linear_bias=b, chunk_size=8, reduction=reduction
            )
        return loss.sum()

    compiled = torch.compile(step, fullgraph=True)
    x, w, b, t = make(device, torch.float32)
    eager_leaves = [v.clone().requires_grad_() for v in (x, w, b)]
    comp_leaves = [v.clone().requires_grad_() for v in (x, w, b)]
    eager, comp = step(*eager_leaves, t), compiled(*comp_leaves, t)
    assert eager.dtype == comp.dtype == torch.float32
    torch.testing.assert_close(comp, eager)
    eager.backward()
    comp.backward()
    # Inductor may drop the round trip of a gradient through bfloat16 (the operands' casts):
    # gradients agree to bfloat16's precision.
    for e, c in zip(eager_leaves, comp_leaves, strict=True):
        torch.testing.assert_close(c.grad, e.grad, rtol=1e-2, atol=1e-2 * e.grad.abs().max())


MEMORY_STEP = """
import sys, torch, logitops, torch.nn.functional as F

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

torch.set_num_threads(1)
x = torch.randn(4096, 256, requires_grad=True)
w = (torch.randn(32000, 256) / 16).requires_grad_()
t = torch.randint(0, 32000, (4096,))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status_kib("VmRSS")
if sys.argv[1] == "fused":
    logitops.linear_cross_entropy(x, w, t).backward()
else:
    F.cross_entropy(x @ w.T, t).backward()
print((status_kib("VmHWM") - base) * 1024)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_is_a_quarter_of_unfused():
    def peak(kind):
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_STEP, kind], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip().splitlines()[-1])

    fused, unfused = peak("fused"), peak("unfused")
    assert fused * 4 <= unfused, (fused, unfused)


X, W, T = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 2, 3, 4])

BAD_CALLS = [
    ("linear_weight", ValueError, lambda: logitops.linear_cross_entropy(X, W[:, :7], T)),
    ("target", ValueError, lambda: logitops.linear_cross_entropy(X, W, T[:3])),
    (
        "linear_bias",
        ValueError,
        lambda: logitops.linear_cross_entropy(X, W, T, linear_bias=torch.zeros(9)),
    ),
    ("chunk_size", ValueError, lambda: logitops.linear_cross_entropy(X, W, T, chunk_size=0)),
    ("input", TypeError, lambda: logitops.linear_cross_entropy(X.long(), W, T)),
    ("reduction", ValueError, lambda: logitops.linear_cross_entropy(X, W, T, reduction="avg")),
    (
        "ignore_index",
        ValueError,
        lambda: logitops.linear_cross_entropy(X, W, torch.rand(4, 10), ignore_index=-100),
    ),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()
