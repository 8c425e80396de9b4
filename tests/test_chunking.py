"""logitops._chunking.LinearGradients (the vocabulary-parallel chunk loop's accumulator) gives the
gradients of its C++ twin, LinearGradients in csrc/linear_cross_entropy.cpp, which the
single-device linear_cross_entropy_backward op drives: same chunks, same logits' gradient, same
float32 accumulation for half-precision inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

from logitops._chunking import (
    LinearGradients,
    chunk_bytes,
    chunks,
    cuda_chunk_bytes,
    default_chunk_size,
)
from logitops.ops import cross_entropy as ce_ops
from logitops.ops import linear_cross_entropy as lce_ops
from logitops.ops._common import REDUCTION_NONE

IGNORE, SMOOTHING, Z_LOSS = -100, 0.1, 1e-3


def _python_gradients(grad_rows, x, w, b, t, lse, chunk_size):
    grads = LinearGradients(x, w, b is not None)
    unused_total = torch.zeros((), dtype=lse.dtype, device=x.device)
    for start, end in chunks(x.shape[0], chunk_size):
        logits = F.linear(x[start:end], w, b)
        grad = ce_ops.cross_entropy_backward(
            grad_rows[start:end], None, logits, t[start:end], None, lse[start:end],
            unused_total, IGNORE, SMOOTHING, Z_LOSS, 0.0, REDUCTION_NONE,
        )  # fmt: skip
        grads.add(start, end, x[start:end], w, grad.to(x.dtype))
    return grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk_size", [1, 4, 13, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_python_linear_gradients_match_the_cpp_twin(device, dtype, chunk_size, with_bias):
    g = torch.Generator().manual_seed(chunk_size)
    rows, hidden, vocab = 29, 16, 37
    x = torch.randn(rows, hidden, generator=g).to(device, dtype)
    w = (0.3 * torch.randn(vocab, hidden, generator=g)).to(device, dtype)
    b = torch.randn(vocab, generator=g).to(device, dtype) if with_bias else None
    t = torch.randint(0, vocab, (rows,), generator=g).to(device)
    t[3] = IGNORE
    acc = torch.float32
    grad_rows = torch.rand(rows, generator=g, dtype=acc).to(device)
    lse = lce_ops.linear_cross_entropy_forward(
        x, w, b, t, None, IGNORE, SMOOTHING, Z_LOSS, 0.0, REDUCTION_NONE, chunk_size,
        False,
    )[1]  # fmt: skip
    expected = lce_ops.linear_cross_entropy_backward(
        grad_rows, x, w, b, t, None, lse, IGNORE, SMOOTHING, Z_LOSS, 0.0, chunk_size
    )
    grads = _python_gradients(grad_rows, x, w, b, t, lse, chunk_size)
    assert grads.weight.dtype == expected[1].dtype == acc
    # The same operations in the same order: bit-identical on the CPU; cuBLAS may choose another
    # algorithm for beta = 0 (the C++ first chunk) than for beta = 1 over zeros.
    tolerance = {"rtol": 0, "atol": 0} if device == "cpu" else {}
    torch.testing.assert_close(grads.input, expected[0], **tolerance)
    torch.testing.assert_close(grads.weight, expected[1], **tolerance)
    if with_bias:
        torch.testing.assert_close(grads.bias, expected[2], **tolerance)
    else:
        assert grads.bias is None and expected[2].numel() == 0


def test_chunks_cover_the_tokens_once():
    assert list(chunks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(chunks(4, 4)) == [(0, 4)]
    assert list(chunks(0, 4)) == []


def test_cuda_chunks_take_a_quarter_of_free_memory_within_bounds():
    assert cuda_chunk_bytes(8 << 30) == 2 << 30
    assert cuda_chunk_bytes(80 << 30) == 2 << 30
    assert cuda_chunk_bytes(1 << 30) == 256 << 20
    assert cuda_chunk_bytes(0) == 64 << 20
    assert chunk_bytes(torch.device("cpu")) == 64 << 20
    # 8192 tokens x 128256 bf16 with 60 GB free: one chunk, not the 32 of 64 MiB each
    assert default_chunk_size(8192, 128256, 2, cuda_chunk_bytes(60 << 30)) == 8192
    assert -(-8192 // default_chunk_size(8192, 128256, 2)) == 32


def test_default_chunk_size_is_about_64_mib_of_logits():
    assert default_chunk_size(10, 1000, 4) == 10
    assert default_chunk_size(1 << 20, 1 << 14, 4) == (64 << 20) // ((1 << 14) * 4)
    assert default_chunk_size(5, 1 << 30, 2) == 1
