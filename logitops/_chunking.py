"""Token chunks of the fused linear cross-entropy: the default chunk size (both forms) and, for
the vocabulary-parallel chunk loop (logitops.distributed), the chunks and the linear layer's
gradients accumulated chunk by chunk. (The single-device op runs its own loop in C++,
csrc/linear_cross_entropy.cpp.)"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .ops._common import accumulation_dtype

__all__ = ["LinearGradients", "chunk_bytes", "chunks", "cuda_chunk_bytes", "default_chunk_size"]


# Bytes of logits per chunk. On the CPU, 64 MiB. On CUDA, a quarter of the free device memory
# (the chunk's logits and their gradient, with room to spare) within [64 MiB, 2 GiB]: each chunk
# reads and writes the float32 weight-gradient accumulator [V, H] once, and with 64 MiB chunks at
# V = 128256 that traffic (~30 chunks of 2 x 4 bytes x V x H) would rival the matmuls. Under
# torch.compile the size is a constant of the graph: 256 MiB.
CPU_CHUNK_BYTES = 64 << 20
CUDA_CHUNK_BYTES_RANGE = (64 << 20, 2 << 30)
COMPILED_CUDA_CHUNK_BYTES = 256 << 20


def cuda_chunk_bytes(free_bytes: int) -> int:
    low, high = CUDA_CHUNK_BYTES_RANGE
    return int(min(high, max(low, free_bytes // 4)))


def chunk_bytes(device: torch.device) -> int:
    """The logits' bytes per chunk on ``device`` (see CPU_CHUNK_BYTES)."""
    if device.type != "cuda":
        return CPU_CHUNK_BYTES
    if torch.compiler.is_compiling():
        return COMPILED_CUDA_CHUNK_BYTES
    free, _ = torch.cuda.mem_get_info(device)  # a driver query, no stream sync
    return cuda_chunk_bytes(free)


def default_chunk_size(
    num_tokens: int, vocab: int, element_size: int, budget_bytes: int = CPU_CHUNK_BYTES
) -> int:
    """Tokens per chunk: about ``budget_bytes`` of logits (and as much again for their
    gradient), at least one token."""
    return max(1, min(num_tokens, budget_bytes // max(1, vocab * element_size)))


def chunks(num_tokens: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each chunk of ``chunk_size`` tokens, the last one possibly shorter."""
    for start in range(0, num_tokens, chunk_size):
        yield start, min(num_tokens, start + chunk_size)


class LinearGradients:
    """dX, dW and db of the linear layer, filled chunk by chunk from the logits' gradient
    (weight and bias accumulated in float32 for half-precision inputs).

    Twin of ``LinearGradients`` in csrc/linear_cross_entropy.cpp, which the single-device op
    uses; this one serves the vocabulary-parallel chunk loop (logitops.distributed), whose
    per-chunk statistics and gradient come from other ops and a collective, so it cannot drive
    the C++ loop. The C++ one also folds an upstream scale into the accumulation; for a scale
    of 1 both give the same gradients (tests/test_chunking.py pins them).
    """

    def __init__(self, input: Tensor, linear_weight: Tensor, with_bias: bool) -> None:
        self.acc = accumulation_dtype(input.dtype)
        self.input = torch.empty_like(input)
        self.weight = torch.zeros(linear_weight.shape, dtype=self.acc, device=input.device)
        self.bias = (
            torch.zeros(linear_weight.shape[0], dtype=self.acc, device=input.device)
            if with_bias
            else None
        )

    def add(self, start: int, end: int, x: Tensor, linear_weight: Tensor, grad: Tensor) -> None:
        torch.mm(grad, linear_weight, out=self.input[start:end])
        if grad.dtype == self.acc:
            self.weight.addmm_(grad.t(), x)
        elif grad.is_cuda:
            # cuBLAS multiplies half-precision operands into the float32 accumulator directly.
            torch.addmm(self.weight, grad.t(), x, out_dtype=self.acc, out=self.weight)
        else:
            # A half-precision CPU matmul accumulates in float32 and rounds once per chunk; twice
            # as fast as upcasting both operands, and the sum over chunks stays in float32.
            self.weight += grad.t() @ x
        if self.bias is not None:
            self.bias += grad.sum(0, dtype=self.acc)
