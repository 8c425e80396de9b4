"""linear_cross_entropy beyond first-order backward: double backward (create_graph=True),
torch.func transforms and forward-mode AD, torch.autocast, torch's signature, and torch's own
OpInfo samples for F.linear_cross_entropy run against our drop-in."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from reference import cross_entropy_reference

import logitops

V, H = 11, 5

# Options of the fused path; the reference is cross_entropy_reference (float64, differentiable
# twice: softcap and z_loss are ours), or torch's own F.cross_entropy where it has the option.
CASES = [
    {},
    {"weight": True, "label_smoothing": 0.2},
    {"z_loss": 1e-2, "softcap": 3.0, "ignore_index": 2},
]


def make(dtype=torch.float64, tokens=7, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, H, generator=g, dtype=torch.float64)
    w = torch.randn(V, H, generator=g, dtype=torch.float64) / 2
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    t = torch.randint(0, V, (tokens,), generator=g)
    t[::4] = -100
    x, w = x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
    b = None if b is None else b.to(dtype).requires_grad_()
    return x, w, b, t


def options_of(case, dtype=torch.float64):
    kwargs = dict(case)
    if kwargs.pop("weight", False):
        kwargs["weight"] = torch.linspace(0.5, 1.5, V, dtype=dtype)
    return kwargs


def ours(x, w, b, t, reduction, chunk_size=3, **kwargs):
    return logitops.linear_cross_entropy(
        x, w, t, linear_bias=b, reduction=reduction, chunk_size=chunk_size, **kwargs
    )


def reference(x, w, b, t, reduction, **kwargs):
    if "ignore_index" in kwargs:
        t = torch.where(t == -100, torch.full_like(t, kwargs["ignore_index"]), t)
    return cross_entropy_reference(F.linear(x, w, b), t, reduction=reduction, **kwargs)[0]


def fix_ignore(t, kwargs):
    if "ignore_index" in kwargs:
        return torch.where(t == -100, torch.full_like(t, kwargs["ignore_index"]), t)
    return t


# ----------------------------------------------------------------------------------------------
# (a) double backward


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_double_backward_matches_torch(case, reduction):
    """The gradient of a gradient penalty: (l + 10 * sum(g**2)).backward() with g from
    create_graph=True must have both terms, as the unfused float64 composition gives."""
    kwargs = options_of(case)
    results = []
    for fn in (ours, reference):
        x, w, b, t = make()
        t = fix_ignore(t, kwargs)
        loss = fn(x, w, b, t, reduction, **kwargs)
        upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=torch.float64).reshape(loss.shape)
        scalar = (loss * upstream).sum()
        grads = torch.autograd.grad(scalar, (x, w, b), create_graph=True)
        assert all(g.grad_fn is not None for g in grads)
        (scalar + 10 * sum((g**2).sum() for g in grads)).backward()
        results.append((x.grad, w.grad, b.grad))
    for name, got, want in zip(("input", "weight", "bias"), *results, strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradgradcheck(case, reduction):
    kwargs = options_of(case)
    x, w, b, t = make(tokens=5)
    t = fix_ignore(t, kwargs)

    def fn(x, w, b):
        return ours(x, w, b, t, reduction, chunk_size=2, **kwargs)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_double_backward_matches_torch_linear_cross_entropy():
    x, w, b, t = make()
    loss = logitops.linear_cross_entropy(x, w, t, linear_bias=b, label_smoothing=0.1)
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    (hvp,) = torch.autograd.grad(g, x, torch.ones_like(g))
    x2, w2, b2 = (v.detach().clone().requires_grad_() for v in (x, w, b))
    ref = F.linear_cross_entropy(x2, w2, t, linear_bias=b2, label_smoothing=0.1)
    (g2,) = torch.autograd.grad(ref, w2, create_graph=True)
    (hvp2,) = torch.autograd.grad(g2, x2, torch.ones_like(g2))
    torch.testing.assert_close(g, g2)
    torch.testing.assert_close(hvp, hvp2)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_batched_upstream_gradients(reduction):
    """autograd.grad(is_grads_batched=True): the Jacobian of the graph built in eager mode."""
    results = []
    for fn in (ours, reference):
        x, w, b, t = make()
        loss = fn(x, w, b, t, reduction)
        eye = torch.eye(loss.numel(), dtype=loss.dtype).reshape(-1, *loss.shape)
        results.append(torch.autograd.grad(loss, (x, w, b), eye, is_grads_batched=True))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


def test_first_order_backward_still_fused():
    """Without create_graph the gradients come from the fused op (no graph of their own)."""
    x, w, b, t = make()
    loss = logitops.linear_cross_entropy(x, w, t, linear_bias=b, reduction="none")
    grads = torch.autograd.grad(loss.sum(), (x, w, b))
    assert all(g.grad_fn is None for g in grads)
    node = loss.grad_fn  # the reshape to the target's shape, then the op
    assert (
        node.next_functions[0][0]
        .name()
        .startswith("GeneratedBackwardFor_logitops_linear_cross_entropy_forward")
    )


# ----------------------------------------------------------------------------------------------
# (b) torch.func transforms and forward-mode AD


def torch_loss(x, w, b, t, reduction="mean", **kwargs):
    return F.cross_entropy(F.linear(x, w, b), t, reduction=reduction, **kwargs)


def our_loss(x, w, b, t, reduction="mean", **kwargs):
    return logitops.linear_cross_entropy(
        x, w, t, linear_bias=b, reduction=reduction, chunk_size=3, **kwargs
    )


FUNC_CASES = [{}, {"weight": True, "label_smoothing": 0.1, "ignore_index": 2}]


@pytest.mark.parametrize("case", FUNC_CASES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_func_grad_vjp_jvp_jacrev(case, reduction):
    kwargs = options_of(case)
    x, w, b, t = (v.detach() if v is not None and v.is_floating_point() else v for v in make())
    t = fix_ignore(t, kwargs)
    v_x, v_w = torch.randn_like(x), torch.randn_like(w)
    results = []
    for fn in (our_loss, torch_loss):

        def f(x, w, fn=fn):
            return fn(x, w, b, t, reduction, **kwargs)

        out, vjp_fn = torch.func.vjp(f, x, w)
        cotangent = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
        _, tangent = torch.func.jvp(f, (x, w), (v_x, v_w))
        results.append(
            [
                out,
                *vjp_fn(cotangent),
                tangent,
                *torch.func.jacrev(f, argnums=(0, 1))(x, w),
                *torch.func.jacfwd(f, argnums=(0, 1))(x, w),
                *torch.func.grad(lambda x, w, c=cotangent: (f(x, w) * c).sum(), argnums=(0, 1))(
                    x, w
                ),
            ]
        )
    for i, (got, want) in enumerate(zip(*results, strict=True)):
        torch.testing.assert_close(got, want, msg=lambda m, i=i: f"result {i}: {m}")
    assert results[0][3].abs().max() > 0  # the tangent is not the zero the ops alone give


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_func_vmap_and_per_sample_grads(reduction):
    x, w, b, t = (v.detach() if v is not None and v.is_floating_point() else v for v in make())
    t[t == -100] = 1
    batched_w = torch.stack([w, 2 * w, -w])
    # vmap over a batch of heads, and per-sample gradients (vmap(grad)) as Opacus-style training.
    got_vmap = torch.func.vmap(lambda w_: our_loss(x, w_, b, t, reduction))(batched_w)
    want_vmap = torch.stack([torch_loss(x, w_, b, t, reduction) for w_ in batched_w])
    torch.testing.assert_close(got_vmap, want_vmap)

    def per_sample(fn):
        def one(xi, ti):
            return fn(xi.unsqueeze(0), w, b, ti.unsqueeze(0), "sum")

        return torch.func.vmap(torch.func.grad(one, argnums=0))(x, t)

    want = per_sample(torch_loss)
    assert want.abs().max() > 0
    torch.testing.assert_close(per_sample(our_loss), want)
    # unbatched input [H] with a 0-d target, as F.linear_cross_entropy takes them
    unbatched = torch.func.vmap(torch.func.grad(lambda xi, ti: our_loss(xi, w, b, ti, "sum")))
    torch.testing.assert_close(unbatched(x, t), want, msg="1-D input under vmap(grad)")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_forward_ad_dual_tensors(reduction):
    x, w, b, t = (v.detach() if v is not None and v.is_floating_point() else v for v in make())
    v_x, v_b = torch.randn_like(x), torch.randn_like(b)
    results = []
    for fn in (our_loss, torch_loss):
        with fwAD.dual_level():
            out = fn(fwAD.make_dual(x, v_x), w, fwAD.make_dual(b, v_b), t, reduction)
            primal, tangent = fwAD.unpack_dual(out)
            assert tangent is not None
            results.append((primal.clone(), tangent.clone()))
    torch.testing.assert_close(results[0], results[1])


def test_func_hessian_matches_torch():
    x, w, b, t = (
        v.detach() if v is not None and v.is_floating_point() else v for v in make(tokens=3)
    )
    got = torch.func.hessian(lambda b_: our_loss(x, w, b_, t))(b)
    want = torch.func.hessian(lambda b_: torch_loss(x, w, b_, t))(b)
    torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------------------------
# (c) autocast


def _autocast_pair(device, dtype, reduction, **kwargs):
    """Loss and fp32 gradients of ours and of F.linear + F.cross_entropy under autocast."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(40, 32, generator=g).to(device)
    w0 = (torch.randn(300, 32, generator=g) / 4).to(device)
    b0 = torch.randn(300, generator=g).to(device)
    t = torch.randint(0, 300, (40,), generator=g).to(device)
    t[::5] = -100
    results = []
    for fn in (our_loss, torch_loss):
        x, w, b = (v.clone().requires_grad_() for v in (x0, w0, b0))
        with torch.autocast(device, dtype=dtype):
            loss = fn(x, w, b, t, reduction, **kwargs)
        upstream = torch.linspace(0.5, 1.5, loss.numel(), device=device).reshape(loss.shape)
        (loss * upstream).sum().backward()
        results.append((loss, x.grad, w.grad, b.grad))
    return results


def _check_autocast(device, dtype, reduction):
    (loss, *grads), (ref, *ref_grads) = _autocast_pair(
        device, dtype, reduction, label_smoothing=0.1
    )
    assert loss.dtype == ref.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in grads)
    # the same half-precision logits, the loss in float32: no rounding to the autocast dtype
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    tol = {torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    for name, got, want in zip(("input", "weight", "bias"), grads, ref_grads, strict=True):
        scale = want.abs().max()
        torch.testing.assert_close(
            got / scale, want / scale, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cpu_autocast(dtype, reduction):
    _check_autocast("cpu", dtype, reduction)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cuda_autocast(dtype, reduction):
    _check_autocast("cuda", dtype, reduction)


def test_autocast_matmul_runs_in_autocast_dtype():
    """The loss under bf16 autocast is that of the bf16-rounded logits, not of fp32 logits."""
    x, w, _, t = (
        v.detach() if v is not None and v.is_floating_point() else v
        for v in make(torch.float32, tokens=64)
    )
    w = w * 8
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = logitops.linear_cross_entropy(x, w, t, reduction="sum")
    bf16 = F.cross_entropy(F.linear(x.bfloat16(), w.bfloat16()).float(), t, reduction="sum")
    fp32 = F.cross_entropy(F.linear(x, w), t, reduction="sum")
    assert (got - bf16).abs() < (bf16 - fp32).abs() / 4


# ----------------------------------------------------------------------------------------------
# (d) torch's signature and its OpInfo samples


def test_signature_accepts_torchs():
    theirs = inspect.signature(F.linear_cross_entropy).parameters
    mine = inspect.signature(logitops.linear_cross_entropy).parameters
    assert list(mine)[: len(theirs)] == list(theirs)
    for name, param in theirs.items():
        assert mine[name].kind == param.kind, name
        assert mine[name].default == param.default, name


def test_ignore_index_none_is_torchs_default():
    x, w, b, t = make()
    got = logitops.linear_cross_entropy(x, w, t, linear_bias=b, ignore_index=None)
    torch.testing.assert_close(got, F.linear_cross_entropy(x, w, t, linear_bias=b))
    module = logitops.nn.LinearCrossEntropyLoss()
    torch.testing.assert_close(module(x, w, t, b), got)
    assert module.ignore_index is None


def test_options_give_the_chunk_size():
    x, w, b, t = make(tokens=9)
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2)
    got = logitops.linear_cross_entropy(x, w, t, linear_bias=b, options=opts, reduction="none")
    torch.testing.assert_close(
        got, F.linear_cross_entropy(x, w, t, linear_bias=b, reduction="none")
    )


def test_probability_target_with_ignore_index_raises_like_torch():
    x, w, _, _ = make()
    probs = torch.softmax(torch.randn(7, V, dtype=torch.float64), -1)
    with pytest.raises(RuntimeError, match="ignore_index"):
        F.linear_cross_entropy(x, w, probs, ignore_index=-100)
    with pytest.raises(ValueError, match="ignore_index"):
        logitops.linear_cross_entropy(x, w, probs, ignore_index=-100)


def _opinfos():
    try:
        from torch.testing._internal.common_methods_invocations import op_db
    except Exception:  # pragma: no cover - torch built without its testing package
        return []
    return [op for op in op_db if op.name == "nn.functional.linear_cross_entropy"]


OPINFOS = _opinfos()


def _samples(opinfo, dtype, requires_grad):
    for sample in opinfo.sample_inputs("cpu", dtype, requires_grad=requires_grad):
        yield sample
        yield sample.noncontiguous()


def _call(sample):
    return logitops.linear_cross_entropy(sample.input, *sample.args, **sample.kwargs)


def _leaves(sample):
    tensors = [sample.input, *sample.args, *sample.kwargs.values()]
    return [t for t in tensors if torch.is_tensor(t) and t.requires_grad]


def _ids(opinfos):
    return [f"{op.name}.{op.variant_test_name or 'default'}" for op in opinfos]


@pytest.mark.skipif(not OPINFOS, reason="torch without an OpInfo for linear_cross_entropy")
@pytest.mark.parametrize("opinfo", OPINFOS, ids=_ids(OPINFOS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_opinfo_samples_match(opinfo, dtype):
    """Loss and gradients equal torch's; in bfloat16, where torch's own rounding dominates, ours
    are at most about as far from the float64 result as torch's are."""
    count = 0
    for sample in _samples(opinfo, dtype, requires_grad=True):
        got = _call(sample)
        want = opinfo(sample.input, *sample.args, **sample.kwargs)
        assert got.dtype == want.dtype and got.shape == want.shape, sample
        leaves = _leaves(sample)
        upstream = torch.rand_like(want.float()).to(want.dtype) + 0.5
        results = [(got, *torch.autograd.grad(got, leaves, upstream))]
        results.append((want, *torch.autograd.grad(want, leaves, upstream)))
        if dtype != torch.bfloat16:
            for g, w in zip(*results, strict=True):
                torch.testing.assert_close(g, w, msg=lambda m, s=sample: f"{s}: {m}")
        else:
            # Our half-precision logits are rounded to the input's dtype, as F.linear's are;
            # torch's chunked (options) path keeps them in float32: the error bound is that of
            # torch's reference path (options=None), against the float64 result.
            kwargs = {k: v for k, v in sample.kwargs.items() if k != "options"}
            want = opinfo(sample.input, *sample.args, **kwargs)
            results[1] = (want, *torch.autograd.grad(want, leaves, upstream))
            exact = sample.transform(
                lambda t: (
                    t.detach().double().requires_grad_(t.requires_grad)
                    if torch.is_tensor(t) and t.is_floating_point()
                    else t
                )
            )
            kwargs = {k: v for k, v in exact.kwargs.items() if k != "options"}
            ref = opinfo(exact.input, *exact.args, **kwargs)
            refs = (ref, *torch.autograd.grad(ref, _leaves(exact), upstream.double()))
            for g, w, r in zip(*results, refs, strict=True):
                ours_err = (g.double() - r).abs().max()
                torch_err = (w.double() - r).abs().max()
                assert ours_err <= 2 * torch_err + 4e-3 * r.abs().max(), (
                    sample,
                    ours_err,
                    torch_err,
                )
        count += 1
    assert count > 50


@pytest.mark.skipif(not OPINFOS, reason="torch without an OpInfo for linear_cross_entropy")
@pytest.mark.parametrize("opinfo", OPINFOS, ids=_ids(OPINFOS))
def test_torch_opinfo_samples_gradcheck(opinfo):
    """gradcheck / gradgradcheck / forward-AD check in float64 where torch declares support
    (fast mode: random projections of the Jacobians; the match test covers non-contiguous)."""
    for sample in opinfo.sample_inputs("cpu", torch.float64, requires_grad=True):
        leaves = _leaves(sample)

        def fn(*values, sample=sample, leaves=leaves):
            swap = {id(leaf): value for leaf, value in zip(leaves, values, strict=True)}
            pick = lambda v: swap.get(id(v), v)  # noqa: E731
            return logitops.linear_cross_entropy(
                pick(sample.input),
                *[pick(a) for a in sample.args],
                **{k: pick(v) for k, v in sample.kwargs.items()},
            )

        if opinfo.supports_autograd:
            assert torch.autograd.gradcheck(
                fn, leaves, check_forward_ad=opinfo.supports_forward_ad, fast_mode=True
            ), sample
        if opinfo.supports_gradgrad:
            assert torch.autograd.gradgradcheck(fn, leaves, fast_mode=True), sample
