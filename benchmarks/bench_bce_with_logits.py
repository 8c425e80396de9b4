"""BCE-with-logits: logitops vs PyTorch eager and torch.compile, same run.

Bytes counted (minimal traffic): forward reads input and target (2*N*C*s); forward+backward also
writes the gradient (3*N*C*s). weight / pos_weight broadcast along rows: O(C), not counted.

    python benchmarks/bench_bce_with_logits.py --quick
"""

from __future__ import annotations

import functools
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


def shapes_for(args) -> list[tuple[int, int]]:
    if args.device == "cuda":
        more = [] if args.quick else [(65536, 4096), (1 << 20, 128)]
        return [(4096, 8192), (16384, 8192)] + more
    return [(4096, 8192)] + ([] if args.quick else [(65536, 256), (512, 65536)])


def providers(device: str) -> dict[str, dict[str, object]]:
    return {
        "bce_pos_weight": {
            "logitops": logitops.binary_cross_entropy_with_logits,
            "torch": F.binary_cross_entropy_with_logits,
            "torch.compile": torch.compile(F.binary_cross_entropy_with_logits, dynamic=False),
        }
    }


def inputs(op, shape, dtype, device) -> harness.Inputs:
    rows, cols = shape
    nbytes = rows * cols * dtype.itemsize
    return harness.Inputs(
        functools.partial(torch.randn, rows, cols, device=device, dtype=dtype),
        (torch.randint(0, 2, (rows, cols), device=device).to(dtype),),
        {"pos_weight": torch.rand(cols, device=device, dtype=dtype) * 3},
        bytes_by_mode={"fwd": 2 * nbytes, "fwd+bwd": 3 * nbytes},
    )


FAMILY = harness.Family(
    "bce_with_logits", __doc__, providers, inputs, shapes_for, shapes_help="e.g. 4096x8192",
    cpu_reps=7,
)  # fmt: skip


def main(argv=None) -> list[harness.Measurement]:
    return harness.run_family(FAMILY, argv)


if __name__ == "__main__":
    main()
