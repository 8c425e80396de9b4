"""Eager calls run the differentiable ops through an autograd.Function twin of their torch.library
autograd (ops._common.register_differentiable), which skips torch.library's generic autograd
kernel; opcheck and torch.compile use the registered one. Both must give the same values and
gradients, and eager calls must really take the twin."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES

import logitops

EAGER_TWINS = {
    "cross_entropy": lambda x, t: logitops.ops.cross_entropy.cross_entropy_forward(
        x, t, None, -100, 0.1, 1e-3, 0.0, "mean", True
    )[0],
    "cross_entropy_none": lambda x, t: logitops.ops.cross_entropy.cross_entropy_forward(
        x, t, None, -100, 0.0, 0.0, 30.0, "none", True
    )[0],
    "bce": lambda x, t: logitops.ops.bce_with_logits.bce_with_logits_forward(
        x,
        (t[:, None] == torch.arange(x.shape[1], device=x.device)).to(x.dtype),
        None,
        None,
        "sum",
        True,
    )[0],
    "token_logprobs": lambda x, t: logitops.ops.token_logprobs.token_logprobs_forward(
        x, t, 0.7, -100, True
    )[0],
}
REGISTERED = {
    "cross_entropy": lambda x, t: torch.ops.logitops.cross_entropy_forward.default(
        x, t, None, -100, 0.1, 1e-3, 0.0, "mean", True
    )[0],
    "cross_entropy_none": lambda x, t: torch.ops.logitops.cross_entropy_forward.default(
        x, t, None, -100, 0.0, 0.0, 30.0, "none", True
    )[0],
    "bce": lambda x, t: torch.ops.logitops.bce_with_logits_forward.default(
        x,
        (t[:, None] == torch.arange(x.shape[1], device=x.device)).to(x.dtype),
        None,
        None,
        "sum",
        True,
    )[0],
    "token_logprobs": lambda x, t: torch.ops.logitops.token_logprobs_forward.default(
        x, t, 0.7, -100, True
    )[0],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(EAGER_TWINS))
def test_eager_twin_matches_registered_autograd(device, name):
    x = torch.randn(5, 33, dtype=torch.float64, device=device)
    t = torch.randint(0, 33, (5,), device=device)
    t[1] = -100 if name != "bce" else t[1]
    results = {}
    for path, fn in (("eager", EAGER_TWINS[name]), ("registered", REGISTERED[name])):
        leaf = x.clone().requires_grad_()
        loss = fn(leaf, t)
        assert loss.grad_fn is not None
        results[path] = (loss.detach(), type(loss.grad_fn).__name__)
        loss.backward(
            torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(
                loss.shape
            )
        )
        results[path] += (leaf.grad,)
    eager, registered = results["eager"], results["registered"]
    assert "EagerAutograd" in eager[1], eager[1]
    assert "EagerAutograd" not in registered[1], registered[1]
    torch.testing.assert_close(eager[0], registered[0], rtol=0, atol=0)
    torch.testing.assert_close(eager[2], registered[2], rtol=0, atol=0)


def test_registered_path_under_compile_and_no_grad():
    """Under torch.compile the registered autograd runs (the twin is an eager-only shortcut); with
    nothing requiring grad no graph is recorded."""
    x = torch.randn(4, 9, requires_grad=True)
    t = torch.randint(0, 9, (4,))
    compiled = torch.compile(lambda a, b: logitops.cross_entropy(a, b), fullgraph=True)
    loss = compiled(x, t)
    loss.backward()
    expected = x.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(expected, t).backward()
    torch.testing.assert_close(x.grad, expected.grad)
    assert logitops.cross_entropy(x.detach(), t).grad_fn is None
    with torch.no_grad():
        assert logitops.cross_entropy(x, t).grad_fn is None
