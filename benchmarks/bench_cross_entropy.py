"""Cross-entropy: logitops vs PyTorch eager, torch.compile and installed peers, same run.

Bytes counted (minimal traffic): forward reads N*V*s; forward+backward reads N*V*s and writes
the N*V*s gradient. Targets and per-row values are O(N) and not counted. "bwd" times
loss.backward() alone after an untimed forward; no bandwidth is given for it, since a forward
that already wrote the gradient (logitops on the CPU) leaves it almost nothing to do. Peak memory
is that of a step in a loop: logitops reuses the previous step's gradient buffer on the CPU.

    python benchmarks/bench_cross_entropy.py --quick          # a few minutes on a 2-core CPU
    python benchmarks/bench_cross_entropy.py --device cuda    # LLM shapes on a GPU
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path

# Idle OpenMP workers otherwise sleep and take milliseconds to wake on small shapes (seen on
# the 2-core VMs: every provider's small-shape times jumped to 8 ms). Same for all providers.
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

import logitops  # noqa: E402


def shapes_for(args) -> list[tuple[int, int]]:
    if args.device == "cuda":
        if args.quick:
            return [(4096, 32000), (8192, 128256)]
        return [(n, v) for n in (4096, 8192, 16384) for v in (32000, 128256, 262144)] + [
            (256, 1000)
        ]
    if args.quick:
        return [(4096, 32000), (256, 1000)]
    return [(4096, 32000), (1024, 128256), (256, 1000), (8192, 32000)]


def providers(device: str) -> dict[str, dict[str, object]]:
    """name -> loss function (logits, target) -> scalar, or a string saying why it is skipped."""
    found: dict[str, object] = {
        "logitops": logitops.cross_entropy,
        "torch": F.cross_entropy,
        "torch.compile": torch.compile(F.cross_entropy, dynamic=False),
    }
    try:
        liger = importlib.import_module("liger_kernel.transformers.functional")
        if device != "cuda":
            found["liger"] = "needs CUDA (Triton)"
        else:
            # Liger writes the gradient into the logits buffer: the harness gives it a copy.
            found["liger"] = lambda x, t: liger.liger_cross_entropy(x, t)
    except ImportError:
        found["liger"] = "not installed"
    try:
        quack = importlib.import_module("quack.cross_entropy")
        found["quack"] = (
            (lambda x, t: quack.cross_entropy(x, t).mean()) if device == "cuda" else "needs CUDA"
        )
    except ImportError:
        found["quack"] = "not installed"
    return {"cross_entropy": found}


def inputs(op, shape, dtype, device) -> harness.Inputs:
    rows, vocab = shape
    nbytes = rows * vocab * dtype.itemsize
    return harness.Inputs(
        functools.partial(torch.randn, rows, vocab, device=device, dtype=dtype),
        (torch.randint(0, vocab, (rows,), device=device),),
        bytes_by_mode={"fwd": nbytes, "fwd+bwd": 2 * nbytes},
    )


FAMILY = harness.Family(
    "cross_entropy",
    __doc__,
    providers,
    inputs,
    shapes_for,
    dtypes="fp32,bf16",
    clone_input=frozenset({"liger"}),
)


def main(argv=None) -> list[harness.Measurement]:
    return harness.run_family(FAMILY, argv)


if __name__ == "__main__":
    main()
