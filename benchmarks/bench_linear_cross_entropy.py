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
import gc
import importlib
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

import logitops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def shapes_for(device: str, quick: bool) -> list[tuple[int, int, int]]:
    """(tokens, hidden, vocab)."""
    if device == "cuda":
        if quick:
            return [(8192, 4096, 128256)]
        return [(4096, 4096, 128256), (8192, 4096, 128256), (16384, 2048, 262144)]
    if quick:
        return [(2048, 256, 32000)]
    return [(2048, 256, 32000), (4096, 256, 32000), (1024, 512, 128256)]


def unfused(x, w, t):
    return F.cross_entropy(F.linear(x, w), t)


def providers(device: str) -> dict[str, object]:
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
    return found


def main(argv=None) -> list[harness.Measurement]:
    args = harness.loss_arguments(
        argv, __doc__, modes="fwd+bwd", shapes_help="NxHxV, e.g. 2048x256x32000", cpu_reps=3,
        cuda_reps=20,
    )  # fmt: skip
    device, reps, modes = args.device, args.reps, args.modes
    shapes = args.shapes or shapes_for(device, args.quick)
    dtypes = [DTYPES[d] for d in args.dtypes.split(",")]
    found = harness.keep_providers(providers(device), args.providers)
    copy_gbps = harness.announce(device)
    results: list[harness.Measurement] = []
    started = time.perf_counter()
    for tokens, hidden, vocab in harness.progress(shapes, "shapes"):
        for dtype in dtypes:
            dname = DTYPE_NAMES[dtype]
            shape = f"{tokens}x{hidden}x{vocab}"
            target = torch.randint(0, vocab, (tokens,), device=device)
            weight = (torch.randn(vocab, hidden, device=device) / hidden**0.5).to(dtype)
            weight.requires_grad_()
            for name, fn in found.items():
                if isinstance(fn, str):
                    results += harness.skipped(
                        "linear_ce", name, fn, shape=shape, dtype=dname, modes=modes
                    )
                    continue
                if name == "torch.compile":
                    torch._dynamo.reset()
                print(f"  {name} {shape} {dname} ...", file=sys.stderr, flush=True)
                results += harness.bench_loss(
                    "linear_ce",
                    name,
                    fn,
                    functools.partial(torch.randn, tokens, hidden, device=device, dtype=dtype),
                    (weight, target),
                    shape=shape,
                    dtype=dname,
                    device=device,
                    modes=modes,
                    reps=reps,
                    bytes_by_mode={},
                )
                harness.checkpoint("linear_cross_entropy", device, results, copy_gbps, args.out)
                weight.grad = None
                gc.collect()
    harness.finish(results, copy_gbps)
    for m in results:
        if m.median_ms:
            tokens, hidden, vocab = (int(v) for v in m.shape.split("x"))
            flops = (2 if m.mode == "fwd" else 6) * tokens * hidden * vocab
            m.extra["tflops"] = flops / (m.median_ms * 1e-3) / 1e12
    harness.print_table(results)
    for m in results:
        if m.median_ms:
            print(f"# {m.provider:<30}{m.shape:<20}{m.dtype:<6}{m.extra['tflops']:.2f} TFLOP/s")
    path = harness.write_json("linear_cross_entropy", device, results, copy_gbps, args.out)
    print(f"# {len(results)} results in {time.perf_counter() - started:.0f} s -> {path}")
    return results


if __name__ == "__main__":
    main()
