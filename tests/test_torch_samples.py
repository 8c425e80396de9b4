"""PyTorch's own OpInfo / ModuleInfo sample inputs (shipped with torch in
torch.testing._internal) run against our drop-ins: values and gradients equal torch's in fp32 /
fp64 / bf16, contiguous and not, and gradcheck / gradgradcheck / forward-AD checks wherever
torch's OpInfo declares support for them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import logitops
import logitops.functional as LF

common_methods_invocations = pytest.importorskip(
    "torch.testing._internal.common_methods_invocations"
)
common_modules = pytest.importorskip("torch.testing._internal.common_modules")

OPS = {op.name: op for op in common_methods_invocations.op_db if op.variant_test_name == ""}
DTYPES = [torch.float64, torch.float32, torch.bfloat16]
# Our half-precision results are computed in fp32 and rounded once; torch's bf16 CPU kernels
# round along the way, so both are compared with the float64 value at the dtype's tolerance.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
}


def _samples(name, dtype):
    op = OPS[name]
    for contiguous in (True, False):
        for sample in op.sample_inputs("cpu", dtype, requires_grad=True):
            yield op, sample if contiguous else sample.noncontiguous()


def _float64(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().double().requires_grad_(value.requires_grad)
    return value


def _compare(ours_fn, theirs_fn, tensors, dtype, what):
    """Runs ours in `dtype` and torch in float64 on the same values; compares the outputs and
    the gradients of every floating tensor that requires grad."""
    leaves = [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]
    ours = ours_fn(*tensors)
    assert ours.dtype == dtype, what
    wide = [_float64(t) for t in tensors]
    wide_leaves = [t for t in wide if isinstance(t, torch.Tensor) and t.requires_grad]
    theirs = theirs_fn(*wide)
    torch.testing.assert_close(ours.double(), theirs, **TOL[dtype], msg=lambda m: f"{what}: {m}")
    upstream = torch.linspace(0.5, 1.5, max(1, theirs.numel()), dtype=torch.float64)
    upstream = upstream.reshape(theirs.shape)
    grads = torch.autograd.grad(ours, leaves, upstream.to(dtype), allow_unused=True)
    expected = torch.autograd.grad(theirs, wide_leaves, upstream, allow_unused=True)
    for got, want in zip(grads, expected, strict=True):
        assert (got is None) == (want is None), f"{what}: gradient presence differs"
        if got is not None:
            torch.testing.assert_close(
                got.double(), want, **TOL[dtype], msg=lambda m: f"{what} grad: {m}"
            )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy_samples(dtype):
    count = 0
    for _, sample in _samples("nn.functional.cross_entropy", dtype):
        target, kwargs = sample.args[0], sample.kwargs
        weight = kwargs.get("weight")
        rest = {k: v for k, v in kwargs.items() if k != "weight"}
        _compare(
            lambda x, t, w, rest=rest: LF.cross_entropy(x, t, weight=w, **rest),
            lambda x, t, w, rest=rest: F.cross_entropy(x, t, weight=w, **rest),
            (sample.input, target, weight),
            dtype,
            f"cross_entropy {tuple(sample.input.shape)} {kwargs}",
        )
        count += 1
    assert count >= 40


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bce_with_logits_samples(dtype):
    count = 0
    for _, sample in _samples("nn.functional.binary_cross_entropy_with_logits", dtype):
        target, kwargs = sample.args[0], sample.kwargs
        names = [k for k in ("weight", "pos_weight") if k in kwargs]
        rest = {k: v for k, v in kwargs.items() if k not in names}

        def call(fn, x, t, *extra, names=names, rest=rest):
            return fn(x, t, **dict(zip(names, extra, strict=True)), **rest)

        _compare(
            lambda *a: call(LF.binary_cross_entropy_with_logits, *a),
            lambda *a: call(F.binary_cross_entropy_with_logits, *a),
            (sample.input, target, *[kwargs[k] for k in names]),
            dtype,
            f"bce {tuple(sample.input.shape)} {kwargs}",
        )
        count += 1
    assert count >= 40


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kl_div_shaped_samples(dtype):
    """kl_div's samples read as two logit tensors: ours is KL(softmax(t) || softmax(s)) over the
    last dimension, torch's the same from log_softmax inputs. Per-row for 'none'; 'batchmean'
    divides by the number of rows (the flattened leading dimensions), which for a 1-D input is
    1, where torch divides by the size of dimension 0 (docs/contract.md)."""
    count = 0
    for _, sample in _samples("nn.functional.kl_div", dtype):
        reduction = sample.kwargs["reduction"]
        if reduction == "mean":
            continue  # no per-element mean of a divergence between distributions
        rows = sample.input.numel() // sample.input.shape[-1]

        def theirs(s, t, reduction=reduction, rows=rows):
            log_q, log_p = F.log_softmax(s, -1), F.log_softmax(t, -1)
            terms = F.kl_div(log_q, log_p, reduction="none", log_target=True)
            if reduction == "none":
                return terms.sum(-1)
            return terms.sum() / (rows if reduction == "batchmean" else 1)

        _compare(
            lambda s, t, reduction=reduction: LF.kl_div_with_logits(s, t, reduction=reduction),
            theirs,
            (sample.input, sample.args[0].detach()),
            dtype,
            f"kl {tuple(sample.input.shape)} {sample.kwargs}",
        )
        count += 1
    assert count >= 20


def _autograd_checks(op, name, ours):
    for sample in op.sample_inputs("cpu", torch.float64, requires_grad=True):
        args = (sample.input, *sample.args)
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        extra = [a for a in sample.kwargs.values() if isinstance(a, torch.Tensor)]
        for t in extra:
            t.requires_grad_(False)

        def fn(*diff, args=args, kwargs=sample.kwargs):
            it = iter(diff)
            full = [
                next(it) if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args
            ]
            return ours(*full, **kwargs)

        what = f"{name} {tuple(sample.input.shape)} {sample.kwargs}"
        assert torch.autograd.gradcheck(
            fn, inputs, check_forward_ad=op.supports_forward_ad, check_batched_grad=True
        ), what
        if op.supports_gradgrad:
            assert torch.autograd.gradgradcheck(fn, inputs), what


def test_cross_entropy_samples_gradcheck():
    op = OPS["nn.functional.cross_entropy"]
    assert op.supports_gradgrad and op.supports_forward_ad
    _autograd_checks(op, "cross_entropy", LF.cross_entropy)


def test_bce_with_logits_samples_gradcheck():
    op = OPS["nn.functional.binary_cross_entropy_with_logits"]
    _autograd_checks(op, "bce", LF.binary_cross_entropy_with_logits)


def test_bce_with_logits_module_samples():
    info = next(m for m in common_modules.module_db if m.module_cls is torch.nn.BCEWithLogitsLoss)
    count = 0
    for dtype in DTYPES:
        inputs = info.module_inputs_func(
            info, device="cpu", dtype=dtype, requires_grad=True, training=True
        )
        for module_input in inputs:
            ctor = module_input.constructor_input
            ours_module = logitops.nn.BCEWithLogitsLoss(*ctor.args, **ctor.kwargs)
            theirs_module = torch.nn.BCEWithLogitsLoss(*ctor.args, **ctor.kwargs).double()
            _compare(
                ours_module,
                theirs_module,
                tuple(module_input.forward_input.args),
                dtype,
                f"BCEWithLogitsLoss {ctor.kwargs}",
            )
            count += 1
    assert count >= 6


def test_probability_targets_reject_ignore_index_as_torch():
    x, t = torch.randn(2, 3), torch.rand(2, 3)
    with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point"):
        F.cross_entropy(x, t, ignore_index=1)
    with pytest.raises(ValueError, match="ignore_index is not supported for floating point"):
        LF.cross_entropy(x, t, ignore_index=1)
    # The default is accepted, as in torch.
    torch.testing.assert_close(LF.cross_entropy(x, t, ignore_index=-100), F.cross_entropy(x, t))
