"""Property-based tests: random shapes, dtypes, strides and options against the oracles.

Bounded (few examples, small tensors, no deadline flakiness) so the suite stays fast in CI.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TOLERANCES
from reference import bce_with_logits_reference, cross_entropy_reference, filter_reference

import logitops

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given, settings = hypothesis.given, hypothesis.settings

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
dtypes = st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16])


def tensor_from(seed: int, shape, scale: float, dtype, *, transpose: bool):
    g = torch.Generator().manual_seed(seed)
    if transpose and len(shape) == 2:
        base = torch.randn(shape[::-1], generator=g, dtype=torch.float64).t()
    else:
        base = torch.randn(shape, generator=g, dtype=torch.float64)
    return (base * scale).to(dtype)


@SETTINGS
@given(
    rows=st.integers(0, 9),
    vocab=st.integers(1, 300),
    dtype=dtypes,
    scale=st.sampled_from([0.1, 3.0, 30.0]),
    seed=st.integers(0, 2**31),
    smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    z_loss=st.sampled_from([0.0, 1e-3]),
    softcap=st.sampled_from([None, 5.0]),
    weighted=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    transpose=st.booleans(),
    ignored=st.floats(0.0, 1.0),
)
def test_cross_entropy_matches_oracle(
    rows,
    vocab,
    dtype,
    scale,
    seed,
    smoothing,
    z_loss,
    softcap,
    weighted,
    reduction,
    transpose,
    ignored,
):
    logits = tensor_from(seed, (rows, vocab), scale, dtype, transpose=transpose)
    g = torch.Generator().manual_seed(seed + 1)
    target = torch.randint(0, vocab, (rows,), generator=g)
    target[torch.rand(rows, generator=g) < ignored] = -100
    weight = (
        (torch.rand(vocab, generator=g, dtype=torch.float64) + 0.1).to(dtype) if weighted else None
    )
    kwargs = dict(
        weight=weight,
        reduction=reduction,
        label_smoothing=smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    x = logits.clone().requires_grad_()
    loss = logitops.cross_entropy(x, target, **kwargs)
    xr = logits.double().requires_grad_()
    ref, _ = cross_entropy_reference(
        xr, target, **{**kwargs, "weight": None if weight is None else weight.double()}
    )
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(
        loss.double(), ref, rtol=rtol * 10, atol=atol * 10 * scale, equal_nan=True
    )
    upstream = torch.rand(ref.shape, dtype=torch.float64, generator=g) + 0.5
    loss.backward(upstream.to(dtype))
    ref.backward(upstream)
    torch.testing.assert_close(
        x.grad.double(), xr.grad, rtol=rtol * 10, atol=atol * 10, equal_nan=True
    )


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    dtype=dtypes,
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([0.5, 5.0, 50.0]),
    pos_weight=st.booleans(),
    weight=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_bce_matches_oracle(shape, dtype, seed, scale, pos_weight, weight, reduction):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    kwargs = {}
    if pos_weight:
        kwargs["pos_weight"] = (torch.rand(shape[-1], generator=g, dtype=torch.float64) * 3).to(
            dtype
        )
    if weight:
        kwargs["weight"] = torch.rand(
            (shape[0],) + (1,) * (len(shape) - 1), generator=g, dtype=torch.float64
        ).to(dtype)
    xa = x.clone().requires_grad_()
    loss = logitops.binary_cross_entropy_with_logits(xa, y, reduction=reduction, **kwargs)
    xr = x.double().requires_grad_()
    ref = bce_with_logits_reference(
        xr, y.double(), reduction=reduction, **{k: v.double() for k, v in kwargs.items()}
    )
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(loss.double(), ref, rtol=rtol * 10, atol=atol * 10 * scale)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(xa.grad.double(), xr.grad, rtol=rtol * 10, atol=atol * 10)


@SETTINGS
@given(
    rows=st.integers(1, 4),
    vocab=st.integers(1, 400),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    top_k=st.one_of(st.none(), st.integers(1, 500)),
    top_p=st.one_of(st.none(), st.floats(0.0, 1.0)),
    min_p=st.one_of(st.none(), st.floats(0.0, 1.0)),
    order=st.sampled_from(["hf", "vllm", "joint"]),
    keep=st.integers(1, 3),
)
def test_filter_matches_warper_chain(rows, vocab, seed, dtype, top_k, top_p, min_p, order, keep):
    logits = tensor_from(seed, (rows, vocab), 2.0, dtype, transpose=False)
    out = logitops.filter_logits(
        logits, top_k=top_k, top_p=top_p, min_p=min_p, order=order, min_tokens_to_keep=keep
    )
    for r in range(rows):
        expected, ambiguous = filter_reference(
            logits[r].double(),
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            order=order,
            min_tokens_to_keep=keep,
        )
        differ = ((out[r] > -float("inf")) != expected) & ~ambiguous
        assert not differ.any(), differ.nonzero().flatten().tolist()
    tokens = logitops.sample(logits, top_k=top_k, top_p=top_p, min_p=min_p, order=order, seed=seed)
    assert ((tokens >= 0) & (tokens < vocab)).all()
    chosen = out.gather(1, tokens.unsqueeze(1)).squeeze(1)
    assert (chosen > -float("inf")).all(), "sampled a filtered token"


@SETTINGS
@given(
    rows=st.integers(1, 6),
    vocab=st.integers(1, 200),
    dtype=dtypes,
    seed=st.integers(0, 2**31),
    temperature=st.sampled_from([0.5, 1.0, 3.0]),
    kind=st.sampled_from([("forward", 0.5), ("reverse", 0.5), ("jsd", 0.2), ("jsd", 0.0)]),
    reduction=st.sampled_from(["batchmean", "sum", "none"]),
    ignored=st.floats(0.0, 0.7),
)
def test_divergences_match_oracle(rows, vocab, dtype, seed, temperature, kind, reduction, ignored):
    from reference import kl_div_reference

    student = tensor_from(seed, (rows, vocab), 3.0, dtype, transpose=False)
    teacher = tensor_from(seed + 1, (rows, vocab), 3.0, dtype, transpose=False)
    g = torch.Generator().manual_seed(seed + 2)
    target = torch.randint(0, vocab, (rows,), generator=g)
    target[torch.rand(rows, generator=g) < ignored] = -100
    hypothesis.assume(reduction != "batchmean" or bool((target != -100).any()))
    kwargs = dict(
        temperature=temperature, kind=kind[0], beta=kind[1], target=target, reduction=reduction
    )
    x = student.clone().requires_grad_()
    loss = logitops.kl_div_with_logits(x, teacher, **kwargs)
    xr = student.double().requires_grad_()
    ref = kl_div_reference(xr, teacher.double(), **kwargs)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(loss.double(), ref, rtol=rtol * 10, atol=atol * 30)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=rtol * 10, atol=atol * 10)
