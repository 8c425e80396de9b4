"""Fused linear + cross-entropy (an LM head's loss): logitops vs the unfused PyTorch step
(F.linear then F.cross_entropy, eager and torch.compile), torch's F.linear_cross_entropy and
Liger-Kernel's fused linear cross-entropy where installed, same run: time and peak memory.

Every provider computes the loss and all three gradients (hidden states, head weight, bias-free).
Floors, per training step with N tokens, hidden size H and vocabulary V: three matmuls of
2 * N * H * V flops each (the logits, the input's and the weight's gradients), 6 * N * H * V in
all; and memory that need not exceed the inputs plus one chunk of logits: the unfused step holds
the [N, V] logits and their gradient (2 * N * V * s bytes, more for an fp32 upcast). The table
gives the achieved TFLOP/s of that count ("GB/s" column is not used here) and the peak memory.

    python benchmarks/bench_linear_cross_entropy.py --quick          # about a minute on 2 cores
    python benchmarks/bench_linear_cross_entropy.py --device cuda    # LLM heads on a GPU
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

import logitops  # noqa: E402


def shapes_for(args) -> list[tuple[int, int, int]]:
    """(tokens, hidden, vocab)."""
    if args.device == "cuda":
        if args.quick:
            return [(8192, 4096, 128256)]
        return [(4096, 4096, 128256), (8192, 4096, 128256), (16384, 2048, 262144)]
    if args.quick:
        return [(2048, 256, 32000)]
    return [(2048, 256, 32000), (4096, 256, 32000), (1024, 512, 128256)]


def unfused(x, w, t):
    return F.cross_entropy(F.linear(x, w), t)


def providers(device: str) -> dict[str, dict[str, object]]:
    """name -> loss function (input, weight, target) -> scalar, or why it is skipped."""
    found: dict[str, object] = {
        "logitops": logitops.linear_cross_entropy,
        "torch": unfused,
        "torch.compile": torch.compile(unfused, dynamic=False),
        "torch F.linear_cross_entropy": (
            F.linear_cross_entropy if hasattr(F, "linear_cross_entropy") else "not in this torch"
        ),
    }
    try:
        liger = importlib.import_module("liger_kernel.transformers.functional")
        found["liger"] = (
            (lambda x, w, t: liger.liger_fused_linear_cross_entropy(x, w, t))
            if device == "cuda"
            else "needs CUDA (Triton)"
        )
    except ImportError:
        found["liger"] = "not installed"
    return {"linear_ce": found}


def inputs(op, shape, dtype, device) -> harness.Inputs:
    tokens, hidden, vocab = shape
    weight = (torch.randn(vocab, hidden, device=device) / hidden**0.5).to(dtype)
    return harness.Inputs(
        functools.partial(torch.randn, tokens, hidden, device=device, dtype=dtype),
        (weight.requires_grad_(), torch.randint(0, vocab, (tokens,), device=device)),
    )


def tflops(results: list[harness.Measurement]) -> None:
    """The achieved TFLOP/s of the matmul count (extra["tflops"]), printed per provider."""
    for m in results:
        if m.median_ms:
            tokens, hidden, vocab = (int(v) for v in m.shape.split("x"))
            flops = (2 if m.mode == "fwd" else 6) * tokens * hidden * vocab
            m.extra["tflops"] = flops / (m.median_ms * 1e-3) / 1e12
            print(f"# {m.provider:<30}{m.shape:<20}{m.dtype:<6}{m.extra['tflops']:.2f} TFLOP/s")


FAMILY = harness.Family(
    "linear_cross_entropy",
    __doc__,
    providers,
    inputs,
    shapes_for,
    dtypes="fp32,bf16",
    modes="fwd+bwd",
    shapes_help="NxHxV, e.g. 2048x256x32000",
    cpu_reps=3,
    cuda_reps=20,
    report=tflops,
)


def main(argv=None) -> list[harness.Measurement]:
    return harness.run_family(FAMILY, argv)


if __name__ == "__main__":
    main()
