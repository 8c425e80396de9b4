"""Autograd safety of every differentiable public function: inputs never modified, a retained
graph can run backward twice, upstream ops that saved the input still get correct gradients,
no_grad / inference_mode paths return the same values."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES

import logitops


def _cases(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 40, generator=g, dtype=torch.float64).to(device)
    index = torch.randint(0, 40, (6,), generator=g).to(device)
    probs = torch.softmax(torch.randn(6, 40, generator=g, dtype=torch.float64), -1).to(device)
    labels = torch.rand(6, 40, generator=g, dtype=torch.float64).to(device)
    teacher = torch.randn(6, 40, generator=g, dtype=torch.float64).to(device)
    return {
        "cross_entropy": (x, lambda z: logitops.cross_entropy(z, index, label_smoothing=0.1)),
        "cross_entropy_none": (x, lambda z: logitops.cross_entropy(z, index, reduction="none")),
        "cross_entropy_probs": (x, lambda z: logitops.cross_entropy(z, probs, z_loss=1e-3)),
        "bce": (
            x,
            lambda z: logitops.binary_cross_entropy_with_logits(
                z, labels, pos_weight=torch.full((40,), 2.0, dtype=torch.float64, device=device)
            ),
        ),
        "bce_none": (
            x,
            lambda z: logitops.binary_cross_entropy_with_logits(z, labels, reduction="none"),
        ),
        "kl_forward": (x, lambda z: logitops.kl_div_with_logits(z, teacher, temperature=2.0)),
        "jsd": (x, lambda z: logitops.kl_div_with_logits(z, teacher, kind="jsd", beta=0.3)),
        "distillation": (x, lambda z: logitops.distillation_loss(z, teacher, index)),
    }


CASE_NAMES = list(_cases("cpu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_inputs_untouched_and_retained_graph(device, name):
    x, fn = _cases(device)[name]
    leaf = x.clone().requires_grad_()
    before = leaf.detach().clone()
    loss = fn(leaf).sum()
    loss.backward(retain_graph=True)
    first = leaf.grad.clone()
    loss.backward()
    torch.testing.assert_close(leaf.grad, 2 * first)
    assert torch.equal(leaf.detach(), before)
    # the same gradient as a fresh graph gives
    fresh = x.clone().requires_grad_()
    fn(fresh).sum().backward()
    torch.testing.assert_close(first, fresh.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_upstream_op_that_saved_the_input(device, name):
    x, fn = _cases(device)[name]
    h = x.clone().requires_grad_()
    fn(torch.sigmoid(h) * 4).sum().backward()  # sigmoid saves its output, our input
    hr = x.clone().requires_grad_()
    z = torch.sigmoid(hr) * 4
    # reference: our gradient at z, pushed through sigmoid's own backward separately
    z_leaf = z.detach().requires_grad_()
    fn(z_leaf).sum().backward()
    z.backward(z_leaf.grad)
    torch.testing.assert_close(h.grad, hr.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_no_grad_and_inference_mode_values(device, name):
    x, fn = _cases(device)[name]
    expected = fn(x.clone().requires_grad_()).detach()
    with torch.no_grad():
        torch.testing.assert_close(fn(x.clone().requires_grad_()), expected)
    with torch.inference_mode():
        torch.testing.assert_close(fn(x.clone()), expected)
