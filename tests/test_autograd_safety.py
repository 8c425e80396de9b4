"""Autograd safety of every differentiable public function and module (logitops.functional, the
single-rank paths of logitops.distributed, logitops.nn): inputs never modified, a retained graph
can run backward twice, upstream ops that saved the input still get correct gradients, no_grad /
inference_mode paths return the same values without a graph. In float64 and in float32 (where the
CPU fuses the gradient into the forward)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist
from conftest import DEVICES

import logitops
import logitops.distributed as lpd

DTYPES = [torch.float64, torch.float32]


def _cases(device, dtype):
    """name -> (differentiable inputs, function of them returning a loss)."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)

    x = randn(6, 40)
    index = torch.randint(0, 40, (6,), generator=g).to(device)
    index[4] = -100
    probs = torch.softmax(randn(6, 40), -1)
    labels = torch.rand(6, 40, generator=g, dtype=torch.float64).to(dtype).to(device)
    teacher = randn(6, 40)
    class_weight = torch.rand(40, generator=g, dtype=torch.float64).to(dtype).to(device) + 0.5
    pos_weight = torch.full((40,), 2.0, dtype=dtype, device=device)
    hidden, head, bias = randn(6, 8), randn(40, 8) / 3, randn(40)
    return {
        # logitops.functional
        "cross_entropy": ((x,), lambda z: logitops.cross_entropy(z, index, label_smoothing=0.1)),
        "cross_entropy_none": ((x,), lambda z: logitops.cross_entropy(z, index, reduction="none")),
        "cross_entropy_options": (
            (x,),
            lambda z: logitops.cross_entropy(
                z, index, weight=class_weight, z_loss=1e-3, softcap=5.0, reduction="sum"
            ),
        ),
        "cross_entropy_lse": (
            (x,),
            lambda z: sum(t.sum() for t in logitops.cross_entropy(z, index, return_lse=True)),
        ),
        "cross_entropy_probs": ((x,), lambda z: logitops.cross_entropy(z, probs, z_loss=1e-3)),
        "bce": (
            (x,),
            lambda z: logitops.binary_cross_entropy_with_logits(z, labels, pos_weight=pos_weight),
        ),
        "bce_none": (
            (x,),
            lambda z: logitops.binary_cross_entropy_with_logits(z, labels, reduction="none"),
        ),
        "kl_forward": ((x,), lambda z: logitops.kl_div_with_logits(z, teacher, temperature=2.0)),
        "kl_reverse": ((x,), lambda z: logitops.kl_div_with_logits(z, teacher, kind="reverse")),
        "jsd": ((x,), lambda z: logitops.kl_div_with_logits(z, teacher, kind="jsd", beta=0.3)),
        "distillation": ((x,), lambda z: logitops.distillation_loss(z, teacher, index)),
        "linear_cross_entropy": (
            (hidden, head, bias),
            lambda h, w, b: logitops.linear_cross_entropy(
                h, w, index, linear_bias=b, label_smoothing=0.1, chunk_size=4
            ),
        ),
        "linear_cross_entropy_none": (
            (hidden, head),
            lambda h, w: logitops.linear_cross_entropy(h, w, index, reduction="none"),
        ),
        "token_logprobs": (
            (x,),
            lambda z: sum(
                t.sum()
                for t in logitops.token_logprobs(z, index, temperature=0.7, return_entropy=True)
            ),
        ),
        "linear_token_logprobs": (
            (hidden, head, bias),
            lambda h, w, b: sum(
                t.sum()
                for t in logitops.linear_token_logprobs(
                    h, w, index, linear_bias=b, return_entropy=True, chunk_size=4
                )
            ),
        ),
        # logitops.distributed, one rank
        "vocab_parallel_cross_entropy": (
            (x,),
            lambda z: lpd.vocab_parallel_cross_entropy(z, index, label_smoothing=0.1, z_loss=1e-3),
        ),
        "vocab_parallel_cross_entropy_none": (
            (x,),
            lambda z: lpd.vocab_parallel_cross_entropy(z, index, reduction="none"),
        ),
        "vocab_parallel_linear_cross_entropy": (
            (hidden, head, bias),
            lambda h, w, b: lpd.vocab_parallel_linear_cross_entropy(
                h, w, index, linear_bias=b, chunk_size=4
            ),
        ),
        # logitops.nn
        "nn.CrossEntropyLoss": (
            (x,),
            lambda z: logitops.nn.CrossEntropyLoss(weight=class_weight, label_smoothing=0.1)(
                z, index
            ),
        ),
        "nn.BCEWithLogitsLoss": (
            (x,),
            lambda z: logitops.nn.BCEWithLogitsLoss(pos_weight=pos_weight)(z, labels),
        ),
        "nn.DistillationLoss": (
            (x,),
            lambda z: logitops.nn.DistillationLoss(kind="jsd")(z, teacher, index),
        ),
        "nn.LinearCrossEntropyLoss": (
            (hidden, head, bias),
            lambda h, w, b: logitops.nn.LinearCrossEntropyLoss(chunk_size=4)(h, w, index, b),
        ),
        "nn.VocabParallelCrossEntropyLoss": (
            (x,),
            lambda z: logitops.nn.VocabParallelCrossEntropyLoss(label_smoothing=0.1)(z, index),
        ),
    }


CASE_NAMES = list(_cases("cpu", torch.float64))
NEEDS_GROUP = {name for name in CASE_NAMES if "VocabParallel" in name or "vocab_parallel" in name}


pytestmark = [
    pytest.mark.parametrize("device", DEVICES),
    pytest.mark.parametrize("dtype", DTYPES, ids=str),
    pytest.mark.parametrize("name", CASE_NAMES),
]


@pytest.fixture
def case(device, dtype, name, tmp_path):
    """(inputs, fn) of the test's case; the distributed ones inside a one-rank gloo group."""
    if name in NEEDS_GROUP and not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    with contextlib.ExitStack() as stack:
        if name in NEEDS_GROUP and not dist.is_initialized():
            dist.init_process_group(
                "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
            )
            stack.callback(dist.destroy_process_group)
        yield _cases(device, dtype)[name]


def _leaves(inputs):
    return [v.clone().requires_grad_() for v in inputs]


def test_inputs_untouched_and_retained_graph(device, dtype, name, case):
    inputs, fn = case
    leaves = _leaves(inputs)
    before = [v.detach().clone() for v in leaves]
    loss = fn(*leaves).sum()
    loss.backward(retain_graph=True)
    first = [v.grad.clone() for v in leaves]
    loss.backward()
    for leaf, grad, value in zip(leaves, first, before, strict=True):
        torch.testing.assert_close(leaf.grad, 2 * grad)
        assert torch.equal(leaf.detach(), value)
    # the same gradient as a fresh graph gives
    fresh = _leaves(inputs)
    fn(*fresh).sum().backward()
    for leaf, grad in zip(fresh, first, strict=True):
        torch.testing.assert_close(grad, leaf.grad)


def test_retained_graph_with_other_upstreams_never_modifies_returned_gradients(
    device, dtype, name, case
):
    # The fused forwards' saved gradient is scaled in place by the first backward (on CUDA): a
    # later backward through the retained graph must neither see that nor modify what the first
    # one returned, whatever the upstream of each (0 included, which no later scale can undo).
    inputs, fn = case
    leaves = _leaves(inputs)
    loss = fn(*leaves).sum()
    first = torch.autograd.grad(loss * 0.0, leaves, retain_graph=True)
    kept = [g.clone() for g in first]
    second = torch.autograd.grad(loss, leaves, retain_graph=True)
    third = torch.autograd.grad(loss * 3.0, leaves)
    fresh = _leaves(inputs)
    expected = torch.autograd.grad(fn(*fresh).sum(), fresh)
    for a, b, c, k, e in zip(first, second, third, kept, expected, strict=True):
        assert torch.equal(a, k)
        torch.testing.assert_close(a, torch.zeros_like(e))
        torch.testing.assert_close(b, e)
        torch.testing.assert_close(c, 3 * e)
    # Reentrant: the same upstream twice gives the same bits (gradcheck checks this too).
    leaves = _leaves(inputs)
    loss = fn(*leaves).sum()
    once = torch.autograd.grad(loss * 2.0, leaves, retain_graph=True)
    twice = torch.autograd.grad(loss * 2.0, leaves, retain_graph=True)
    thrice = torch.autograd.grad(loss * 0.5, leaves)
    for a, b, c in zip(once, twice, thrice, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(c, a / 4)


def test_upstream_op_that_saved_the_input(device, dtype, name, case):
    inputs, fn = case
    hs = _leaves(inputs)
    fn(*(torch.sigmoid(h) * 4 for h in hs)).sum().backward()  # sigmoid saves its output, our input
    refs = _leaves(inputs)
    zs = [torch.sigmoid(h) * 4 for h in refs]
    # reference: our gradients at z, pushed through sigmoid's own backward separately
    z_leaves = [z.detach().requires_grad_() for z in zs]
    fn(*z_leaves).sum().backward()
    torch.autograd.backward(zs, [z.grad for z in z_leaves])
    for h, ref in zip(hs, refs, strict=True):
        torch.testing.assert_close(h.grad, ref.grad)


def test_no_grad_and_inference_mode_values(device, dtype, name, case):
    inputs, fn = case
    expected = fn(*_leaves(inputs)).detach()
    with torch.no_grad():
        out = fn(*_leaves(inputs))
    assert not out.requires_grad
    torch.testing.assert_close(out, expected)
    with torch.inference_mode():
        out = fn(*(v.clone() for v in inputs))
    assert not out.requires_grad
    torch.testing.assert_close(out, expected)
