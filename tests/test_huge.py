"""More than 2^31 elements: 64-bit indexing of the cross-entropy and filtering kernels, checked
against a reference on a subset of rows (the last rows sit past element 2^31)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES
from reference import cross_entropy_reference

import logitops

pytestmark = pytest.mark.emulation_skip("more than 2^31 elements: hours of emulated threads")

ROWS, VOCAB = 16400, 131072  # 2,149,580,800 elements: past 2^31 = 2,147,483,648
CHECK_ROWS = [0, 1, 8191, ROWS - 2, ROWS - 1]


def huge_logits(device):
    total_bytes = ROWS * VOCAB * 2
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        if free < 3 * total_bytes:
            pytest.skip("not enough GPU memory")
    x = torch.empty(ROWS, VOCAB, dtype=torch.bfloat16, device=device)
    # Cheap, varied values (randn of 2^31 elements costs minutes on two cores): a per-row
    # pattern with distinct rows, so a wrong row offset gives wrong numbers.
    col = torch.arange(VOCAB, device=device, dtype=torch.float32)
    for start in range(0, ROWS, 2048):
        rows = torch.arange(start, min(ROWS, start + 2048), device=device, dtype=torch.float32)
        x[start : start + rows.numel()] = torch.sin(rows[:, None] * 0.37 + col * 0.0013) * 4
    return x


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_past_2_31_elements(device):
    x = huge_logits(device)
    target = torch.arange(ROWS, device=device) * 7919 % VOCAB
    with torch.no_grad():
        loss = logitops.cross_entropy(x, target, reduction="none")
    x.requires_grad_()
    logitops.cross_entropy(x, target, reduction="sum").backward()
    grad = x.grad
    for r in CHECK_ROWS:
        row = x.detach()[r : r + 1].double().requires_grad_()
        ref, _ = cross_entropy_reference(row, target[r : r + 1], reduction="none")
        ref.sum().backward()
        torch.testing.assert_close(loss[r].double(), ref[0], rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(grad[r].double(), row.grad[0], rtol=2e-2, atol=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_filter_and_sample_past_2_31_elements(device):
    x = huge_logits(device)
    out = logitops.filter_logits(x, top_k=20)
    kept = out > -float("inf")
    for r in CHECK_ROWS:
        kth = torch.topk(x[r].float(), 20).values[-1]
        assert torch.equal(kept[r], x[r].float() >= kth)
    del out, kept
    tokens = logitops.sample(x, top_k=20, seed=torch.arange(ROWS, device=device))
    for r in CHECK_ROWS:
        kth = torch.topk(x[r].float(), 20).values[-1]
        assert x[r, tokens[r]].float() >= kth
