"""Cross-entropy: parity with the float64 oracle and torch, gradients, compile, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, DTYPES, EMULATION, assert_close
from reference import cross_entropy_reference

import logitops

OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"weight": True},
    {"weight": True, "label_smoothing": 0.3},
    {"z_loss": 1e-3},
    {"softcap": 15.0},
    {"softcap": 3.0, "label_smoothing": 0.2, "z_loss": 1e-2, "weight": True},
    {"ignore_index": 2},
]
REDUCTIONS = ["mean", "sum", "none"]


def make_case(rows, vocab, dtype, device, *, ignored=0.25, scale=4.0):
    logits = (torch.randn(rows, vocab, dtype=torch.float64) * scale).to(dtype).to(device)
    target = torch.randint(0, vocab, (rows,), device=device)
    if rows > 1 and ignored:
        target[torch.rand(rows, device=device) < ignored] = -100
    return logits, target


def resolve(options, vocab, dtype, device):
    kwargs = dict(options)
    if kwargs.pop("weight", False):
        kwargs["weight"] = (torch.rand(vocab, dtype=torch.float64) + 0.5).to(dtype).to(device)
    return kwargs


def run_both(logits, target, reduction, kwargs, upstream=None):
    """Loss and gradient of logitops and of the oracle for the same upstream gradient."""
    x = logits.detach().clone().requires_grad_()
    loss = logitops.cross_entropy(x, target, reduction=reduction, **kwargs)
    xr = logits.detach().double().requires_grad_()
    ref_kwargs = {k: v for k, v in kwargs.items()}
    if "weight" in ref_kwargs:
        ref_kwargs["weight"] = ref_kwargs["weight"].double()
    ref, _ = cross_entropy_reference(xr, target, reduction=reduction, **ref_kwargs)
    if upstream is None:
        upstream = torch.randn(ref.shape, dtype=torch.float64, device=logits.device)
    loss.backward(upstream.to(loss.dtype))
    ref.backward(upstream)
    return loss, ref, x.grad, xr.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference(device, dtype, options, reduction):
    logits, target = make_case(37, 1031, dtype, device)
    kwargs = resolve(options, 1031, dtype, device)
    target[target == -100] = kwargs.get("ignore_index", -100)
    loss, ref, grad, ref_grad = run_both(logits, target, reduction, kwargs)
    assert loss.dtype == dtype
    assert_close(loss, ref, dtype, scale=10, what="loss")
    assert_close(grad, ref_grad, dtype, what="grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "rows,vocab",
    [(1, 1), (3, 1), (423, 7), (3, 32000), (1, 50257), (3, 128256), (423, 1000), (5, 4097)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes(device, rows, vocab, dtype):
    logits, target = make_case(rows, vocab, dtype, device)
    kwargs = {"label_smoothing": 0.05}
    loss, ref, grad, ref_grad = run_both(logits, target, "mean", kwargs)
    assert_close(loss, ref, dtype, scale=10, what="loss")
    assert_close(grad, ref_grad, dtype, what="grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.2},
        {"weight": True},
        {"weight": True, "label_smoothing": 0.4},
        {"ignore_index": 0},
    ],
    ids=str,
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torch(device, dtype, options, reduction):
    logits, target = make_case(64, 333, dtype, device)
    kwargs = resolve(options, 333, dtype, device)
    target[target == -100] = kwargs.get("ignore_index", -100)
    x, xt = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = logitops.cross_entropy(x, target, reduction=reduction, **kwargs)
    theirs = F.cross_entropy(xt, target, reduction=reduction, **kwargs)
    upstream = torch.randn_like(theirs)
    ours.backward(upstream)
    theirs.backward(upstream)
    assert_close(ours, theirs, dtype, scale=10, what="loss")
    assert_close(x.grad, xt.grad, dtype, what="grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(10,), (4, 10), (4, 10, 3), (2, 10, 3, 5)])
@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_input_shapes_like_torch(device, shape, probabilities, reduction):
    logits = torch.randn(shape, dtype=torch.float64, device=device)
    class_dim = 0 if len(shape) == 1 else 1
    if probabilities:
        target = torch.softmax(torch.randn(shape, dtype=torch.float64, device=device), class_dim)
    else:
        index_shape = shape[:class_dim] + shape[class_dim + 1 :]
        target = torch.randint(0, shape[class_dim], index_shape, device=device)
        if target.dim() > 0:
            target.view(-1)[0] = -100
    weight = torch.rand(shape[class_dim], dtype=torch.float64, device=device)
    for kwargs in ({}, {"weight": weight, "label_smoothing": 0.1}):
        x, xt = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        ours = logitops.cross_entropy(x, target, reduction=reduction, **kwargs)
        theirs = F.cross_entropy(xt, target, reduction=reduction, **kwargs)
        assert ours.shape == theirs.shape
        upstream = torch.randn_like(theirs)
        ours.backward(upstream)
        theirs.backward(upstream)
        assert_close(ours, theirs, torch.float64, what="loss")
        assert_close(x.grad, xt.grad, torch.float64, what="grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "options", [{}, {"z_loss": 1e-2, "softcap": 5.0, "label_smoothing": 0.1}], ids=str
)
def test_probability_targets_with_extras(device, options):
    logits = torch.randn(6, 50, dtype=torch.float64, device=device)
    target = torch.softmax(torch.randn(6, 50, dtype=torch.float64, device=device), -1)
    x = logits.clone().requires_grad_()
    xr = logits.clone().requires_grad_()
    ours = logitops.cross_entropy(x, target, **options)
    ref, _ = cross_entropy_reference(xr, target, **options)
    ours.backward()
    ref.backward()
    assert_close(ours, ref, torch.float64, what="loss")
    assert_close(x.grad, xr.grad, torch.float64, what="grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_logits(device, dtype):
    big = 1e4 if dtype != torch.float16 else 3e4
    logits = torch.randn(8, 300, dtype=torch.float64)
    logits[0, :] = -float("inf")  # a row of -inf except the target (below)
    logits[1, 5] = big
    logits[2, 7] = -big
    logits[3, ::3] = -float("inf")
    logits[4] *= 1e3
    logits = logits.to(dtype).to(device)
    target = torch.tensor([3, 5, 7, 4, 0, 1, 2, 3], device=device)
    logits[0, 3] = 0.0
    for kwargs in ({}, {"label_smoothing": 0.0, "z_loss": 1e-6}):
        loss, ref, grad, ref_grad = run_both(logits, target, "none", kwargs)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert_close(loss, ref, dtype, scale=10, what="loss")
        assert_close(grad, ref_grad, dtype, what="grad")


@pytest.mark.parametrize("device", DEVICES)
def test_neg_inf_target_and_smoothing_are_inf_like_torch(device):
    logits = torch.zeros(2, 4, device=device)
    logits[0, 1] = -float("inf")
    target = torch.tensor([1, 0], device=device)
    ours = logitops.cross_entropy(logits, target, reduction="none")
    theirs = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(ours, theirs)
    ours = logitops.cross_entropy(logits, target, reduction="none", label_smoothing=0.1)
    theirs = F.cross_entropy(logits, target, reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_and_empty_like_torch(device, reduction):
    logits = torch.randn(4, 9, device=device)
    target = torch.full((4,), -100, device=device)
    for x, t in ((logits, target), (logits[:0], target[:0])):
        x = x.clone().requires_grad_()
        xt = x.detach().clone().requires_grad_()
        ours = logitops.cross_entropy(x, t, reduction=reduction)
        theirs = F.cross_entropy(xt, t, reduction=reduction)
        torch.testing.assert_close(ours, theirs, equal_nan=True)
        ours.sum().backward()
        theirs.sum().backward()
        torch.testing.assert_close(x.grad, xt.grad, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_inputs(device, dtype):
    base = torch.randn(64, 2 * 500, dtype=dtype, device=device)
    cases = [base[:, ::2], base[::2, :500], base.t().contiguous().t()[:, :333]]
    for logits in cases:
        target = torch.randint(0, logits.shape[1], (logits.shape[0],), device=device)
        loss, ref, grad, ref_grad = run_both(logits, target, "none", {"label_smoothing": 0.1})
        assert_close(loss, ref, dtype, scale=10, what="loss")
        assert_close(grad, ref_grad, dtype, what="grad")


@pytest.mark.parametrize("device", DEVICES)
def test_return_lse_and_its_gradient(device):
    logits = torch.randn(5, 40, 3, dtype=torch.float64, device=device)
    target = torch.randint(0, 40, (5, 3), device=device)
    target[0, 0] = -100
    x = logits.clone().requires_grad_()
    xr = logits.clone().requires_grad_()
    loss, lse = logitops.cross_entropy(x, target, softcap=8.0, return_lse=True)
    ref, ref_lse = cross_entropy_reference(xr, target, softcap=8.0)
    assert lse.shape == target.shape and lse.dtype == torch.float64
    assert_close(lse, ref_lse, torch.float64, what="lse")
    w = torch.randn_like(ref_lse)
    (loss + (lse * w).sum()).backward()
    (ref + (ref_lse * w).sum()).backward()
    assert_close(x.grad, xr.grad, torch.float64, what="grad")


@pytest.mark.parametrize("device", DEVICES)
def test_lse_dtype_is_fp32_for_half_inputs(device):
    logits = torch.randn(3, 10, device=device).bfloat16()
    _, lse = logitops.cross_entropy(logits, torch.tensor([1, 2, 3], device=device), return_lse=True)
    assert lse.dtype == torch.float32


# --- autograd (its safety, for every function: tests/test_autograd_safety.py) -----------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_scalar_upstream_gradient(device, scale):
    logits = torch.randn(8, 50, device=device, dtype=torch.float64)
    target = torch.randint(0, 50, (8,), device=device)
    upstream = torch.tensor(scale, dtype=torch.float64, device=device)
    for reduction in ("mean", "sum"):
        loss, ref, grad, ref_grad = run_both(logits, target, reduction, {}, upstream=upstream)
        assert_close(grad, ref_grad, torch.float64, what="grad")


def test_every_gradient_element_written():
    # Large outputs come from a buffer cache: poison it with a NaN run, then check nothing stale
    # survives into the next gradient of the same size.
    logits = torch.randn(512, 5000)
    target = torch.randint(0, 5000, (512,))
    poisoned = torch.full_like(logits, float("nan")).requires_grad_()
    logitops.cross_entropy(poisoned, target).backward()
    assert torch.isnan(poisoned.grad).all()
    del poisoned
    x = logits.clone().requires_grad_()
    logitops.cross_entropy(x, target).backward()
    assert torch.isfinite(x.grad).all()
    xt = logits.clone().requires_grad_()
    F.cross_entropy(xt, target).backward()
    torch.testing.assert_close(x.grad, xt.grad)


def test_cpu_results_independent_of_thread_count():
    logits = torch.randn(301, 2000)
    target = torch.randint(0, 2000, (301,))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            x = logits.clone().requires_grad_()
            loss = logitops.cross_entropy(x, target, label_smoothing=0.1)
            loss.backward()
            results.append((loss, x.grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


# --- dispatcher: gradcheck, compile (opcheck: tests/test_opcheck.py) ------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.2, "weight": True},
        {"z_loss": 0.1, "softcap": 2.0},
        {"reduction": "none"},
        {"reduction": "sum", "label_smoothing": 0.3},
    ],
    ids=str,
)
def test_gradcheck(device, options):
    kwargs = resolve(options, 11, torch.float64, device)
    logits = torch.randn(5, 11, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.tensor([0, 3, -100, 10, 5], device=device)
    torch.autograd.gradcheck(lambda x: logitops.cross_entropy(x, target, **kwargs), (logits,))
    torch.autograd.gradcheck(
        lambda x: logitops.cross_entropy(x, target, return_lse=True, **kwargs)[1], (logits,)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    torch._dynamo.reset()

    def step(x, t, w):
        loss = logitops.cross_entropy(x, t, weight=w, label_smoothing=0.1, z_loss=1e-3)
        return loss * 2

    compiled = torch.compile(step, fullgraph=True)
    logits = torch.randn(16, 70, device=device)
    target = torch.randint(0, 70, (16,), device=device)
    target[0] = -100
    weight = torch.rand(70, device=device)
    x1 = logits.clone().requires_grad_()
    x2 = logits.clone().requires_grad_()
    eager = step(x1, target, weight)
    comp = compiled(x2, target, weight)
    torch.testing.assert_close(comp, eager)
    eager.backward()
    comp.backward()
    torch.testing.assert_close(x2.grad, x1.grad)


# --- nn module ------------------------------------------------------------------------------


def test_module_is_drop_in():
    weight = torch.rand(10)
    ours = logitops.nn.CrossEntropyLoss(weight=weight, ignore_index=3, label_smoothing=0.1)
    theirs = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=3, label_smoothing=0.1)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    x = torch.randn(6, 10)
    t = torch.tensor([0, 3, 9, 3, 1, 2])
    torch.testing.assert_close(ours(x, t), theirs(x, t))
    assert list(logitops.nn.CrossEntropyLoss().state_dict()) == []
    extras = logitops.nn.CrossEntropyLoss(z_loss=1e-3, softcap=30.0)
    expected, _ = cross_entropy_reference(x, t, z_loss=1e-3, softcap=30.0)
    assert_close(extras(x, t), expected, torch.float32, what="module extras")
    assert "softcap=30.0" in repr(extras)


# --- bad input ------------------------------------------------------------------------------

LOGITS = torch.randn(4, 10)
TARGET = torch.tensor([1, 2, 3, 4])

BAD_CALLS = [
    ("target", IndexError, lambda: logitops.cross_entropy(LOGITS, torch.tensor([1, 2, 10, 4]))),
    ("target", IndexError, lambda: logitops.cross_entropy(LOGITS, torch.tensor([1, -1, 3, 4]))),
    ("target", ValueError, lambda: logitops.cross_entropy(LOGITS, TARGET[:3])),
    ("target", ValueError, lambda: logitops.cross_entropy(LOGITS, torch.rand(4, 9))),
    ("target", ValueError, lambda: logitops.cross_entropy(LOGITS, TARGET.float())),
    ("target", TypeError, lambda: logitops.cross_entropy(LOGITS, TARGET > 2)),
    (
        "ignore_index",
        ValueError,
        lambda: logitops.cross_entropy(LOGITS, torch.rand(4, 10), ignore_index=0),
    ),
    ("weight", ValueError, lambda: logitops.cross_entropy(LOGITS, TARGET, weight=torch.ones(9))),
    (
        "weight",
        TypeError,
        lambda: logitops.cross_entropy(LOGITS, TARGET, weight=torch.ones(10, dtype=torch.long)),
    ),
    (
        "label_smoothing",
        ValueError,
        lambda: logitops.cross_entropy(LOGITS, TARGET, label_smoothing=1.5),
    ),
    (
        "label_smoothing",
        ValueError,
        lambda: logitops.cross_entropy(LOGITS, TARGET, label_smoothing=-0.1),
    ),
    ("reduction", ValueError, lambda: logitops.cross_entropy(LOGITS, TARGET, reduction="avg")),
    ("input", TypeError, lambda: logitops.cross_entropy(LOGITS.long(), TARGET)),
    ("input", ValueError, lambda: logitops.cross_entropy(torch.tensor(1.0), TARGET)),
    (
        "input",
        ValueError,
        lambda: logitops.cross_entropy(torch.randn(4, 0), torch.zeros(4, dtype=torch.long)),
    ),
    ("z_loss", ValueError, lambda: logitops.cross_entropy(LOGITS, TARGET, z_loss=-1.0)),
    ("softcap", ValueError, lambda: logitops.cross_entropy(LOGITS, TARGET, softcap=0.0)),
    ("softcap", ValueError, lambda: logitops.cross_entropy(LOGITS, TARGET, softcap=float("inf"))),
    ("target", TypeError, lambda: logitops.cross_entropy(LOGITS, [1, 2, 3, 4])),
    # The CPU kernel's own range check; the CUDA kernels (also under emulation) write NaN rows
    # for an unchecked bad target instead (docs/contract.md).
    *(
        []
        if EMULATION
        else [
            (
                "target",
                IndexError,
                lambda: torch.ops.logitops.cross_entropy_forward(
                    LOGITS, torch.tensor([1, 2, 99, 4]), None, -100, 0.0, 0.0, 0.0, "mean", False
                ),
            )
        ]
    ),
    (
        "logits",
        ValueError,
        lambda: torch.ops.logitops.cross_entropy_forward(
            LOGITS[0], TARGET, None, -100, 0.0, 0.0, 0.0, "mean", False
        ),
    ),
]


@pytest.mark.parametrize(
    "argument,exc,call", BAD_CALLS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_CALLS)]
)
def test_bad_input_raises_clear_error(argument, exc, call):
    with pytest.raises(exc, match=argument):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bad_target_raises_and_context_survives():
    logits = torch.randn(4, 10, device="cuda")
    with pytest.raises(IndexError, match="target"):
        logitops.cross_entropy(logits, torch.tensor([1, 2, 10, 4], device="cuda"))
    with pytest.raises(ValueError, match="target"):
        logitops.cross_entropy(logits, TARGET)  # target on the CPU
    torch.testing.assert_close(
        logitops.cross_entropy(logits, TARGET.cuda()), F.cross_entropy(logits, TARGET.cuda())
    )
    torch.cuda.synchronize()


def test_legacy_size_average_and_reduce():
    x = torch.randn(4, 10)
    for size_average, reduce in ((False, None), (None, False), (True, True)):
        ours = logitops.cross_entropy(x, TARGET, size_average=size_average, reduce=reduce)
        theirs = F.cross_entropy(x, TARGET, size_average=size_average, reduce=reduce)
        torch.testing.assert_close(ours, theirs)


def test_build_info():
    info = logitops.build_info()
    assert {"cross_entropy_forward", "cross_entropy_backward"} <= set(info["ops"])
    assert isinstance(logitops.cuda_kernels_available(), bool)
    if logitops.cuda_kernels_available():
        assert set(info["ops"]) == set(info["ops_with_cuda_kernel"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_probability_targets_every_dtype(device, dtype):
    logits = (torch.randn(33, 517, dtype=torch.float64) * 3).to(dtype).to(device)
    target = torch.softmax(torch.randn(33, 517, dtype=torch.float64) * 2, -1).to(dtype).to(device)
    target[0] = 0
    target[0, 3] = 1  # a one-hot row
    for kwargs in ({}, {"label_smoothing": 0.2, "z_loss": 1e-3, "softcap": 10.0}):
        for reduction in REDUCTIONS:
            x = logits.detach().clone().requires_grad_()
            xr = logits.detach().double().requires_grad_()
            loss = logitops.cross_entropy(x, target, reduction=reduction, **kwargs)
            ref, _ = cross_entropy_reference(xr, target.double(), reduction=reduction, **kwargs)
            upstream = torch.randn(ref.shape, dtype=torch.float64, device=device)
            loss.backward(upstream.to(dtype))
            ref.backward(upstream)
            assert_close(loss, ref, dtype, scale=10, what="loss")
            assert_close(x.grad, xr.grad, dtype, what="grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("fused", [True, False])
def test_ignored_non_finite_rows_get_zero_gradient_under_an_empty_mean(
    device, label_smoothing, fused
):
    """A mean over no counted row is NaN with upstream 1/0 = inf; every row is ignored, so every
    gradient is 0 whatever the logits (NaN, +inf) on every device and path."""
    logits = torch.randn(3, 9, device=device)
    logits[0, 2] = float("nan")
    logits[1, 4] = float("inf")
    target = torch.full((3,), -100, device=device)
    x = logits.clone().requires_grad_()
    if fused:
        loss = logitops.cross_entropy(x, target, label_smoothing=label_smoothing)
    else:  # the backward kernel: the lse output also gets a (zero) gradient
        loss, lse = logitops.cross_entropy(
            x, target, label_smoothing=label_smoothing, return_lse=True
        )
        loss = loss + 0 * lse[2]
    assert torch.isnan(loss)
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.cuda
def test_target_check_is_skipped_while_capturing_a_cuda_graph():
    logits = torch.randn(4, 10, device="cuda")
    target = torch.tensor([1, 2, 3, -100], device="cuda")
    expected = F.cross_entropy(logits, target)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        logitops.cross_entropy(logits, target)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = logitops.cross_entropy(logits, target)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(loss, expected)
