"""Distillation: logitops' fused divergence vs the PyTorch composition (log_softmax + kl_div,
tests/reference.py's kl_div_reference in the inputs' dtype) and torch.compile of it, forward KL
at T = 2, same run.

Bytes counted (minimal traffic): forward reads student and teacher (2*N*V*s); forward+backward
also writes the student's gradient (3*N*V*s).

    python benchmarks/bench_distillation.py --quick
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402
import reference  # noqa: E402  (tests/reference.py, on the path through harness)

import logitops  # noqa: E402

TEMPERATURE = 2.0


def composition(student, teacher):
    """The usual PyTorch distillation term: KL(softmax(t/T) || softmax(s/T)), batchmean."""
    return reference.kl_div_reference(student, teacher, temperature=TEMPERATURE, dtype=None)


def ours(student, teacher):
    return logitops.kl_div_with_logits(student, teacher, temperature=TEMPERATURE)


def shapes_for(args) -> list[tuple[int, int]]:
    if args.device == "cuda":
        return [(4096, 32000), (8192, 128256)]
    return [(4096, 32000)] if args.quick else [(4096, 32000), (1024, 128256)]


def providers(device: str) -> dict[str, dict[str, object]]:
    return {
        "distill_fwd_kl": {
            "logitops": ours,
            "torch": composition,
            "torch.compile": torch.compile(composition, dynamic=False),
        }
    }


def inputs(op, shape, dtype, device) -> harness.Inputs:
    rows, vocab = shape
    nbytes = rows * vocab * dtype.itemsize
    return harness.Inputs(
        functools.partial(torch.randn, rows, vocab, device=device, dtype=dtype),
        (torch.randn(rows, vocab, device=device, dtype=dtype),),
        bytes_by_mode={"fwd": 2 * nbytes, "fwd+bwd": 3 * nbytes},
    )


FAMILY = harness.Family(
    "distillation",
    __doc__,
    providers,
    inputs,
    shapes_for,
    dtypes="fp32,bf16",
    quick_dtypes="fp32",
    modes="fwd,fwd+bwd",
)


def main(argv=None) -> list[harness.Measurement]:
    return harness.run_family(FAMILY, argv)


if __name__ == "__main__":
    main()
