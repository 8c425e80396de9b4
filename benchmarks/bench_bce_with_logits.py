"""BCE-with-logits: logitops vs PyTorch eager and torch.compile, same run.

Bytes counted (minimal traffic): forward reads input and target (2*N*C*s); forward+backward also
writes the gradient (3*N*C*s). weight / pos_weight broadcast along rows: O(C), not counted.

    python benchmarks/bench_bce_with_logits.py --quick
"""

from __future__ import annotations

import functools
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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def shapes_for(device: str, quick: bool) -> list[tuple[int, int]]:
    if device == "cuda":
        return [(4096, 8192), (16384, 8192)] + ([] if quick else [(65536, 4096), (1 << 20, 128)])
    return [(4096, 8192)] + ([] if quick else [(65536, 256), (512, 65536)])


def main(argv=None) -> list[harness.Measurement]:
    args = harness.loss_arguments(argv, __doc__, shapes_help="e.g. 4096x8192", cpu_reps=7)
    device, reps, modes = args.device, args.reps, args.modes
    shapes = args.shapes or shapes_for(device, args.quick)
    found = {
        "logitops": logitops.binary_cross_entropy_with_logits,
        "torch": F.binary_cross_entropy_with_logits,
        "torch.compile": torch.compile(F.binary_cross_entropy_with_logits, dynamic=False),
    }
    found = harness.keep_providers(found, args.providers)
    copy_gbps = harness.announce(device)
    results: list[harness.Measurement] = []
    started = time.perf_counter()
    for rows, cols in harness.progress(shapes, "shapes"):
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            target = torch.randint(0, 2, (rows, cols), device=device).to(dtype)
            pos_weight = torch.rand(cols, device=device, dtype=dtype) * 3
            nbytes = rows * cols * dtype.itemsize
            for name, fn in found.items():
                if name == "torch.compile":
                    # A fresh cache per shape: otherwise dynamo's recompile limit (8) is hit
                    # across shapes and modes, and it silently falls back to eager.
                    torch._dynamo.reset()
                print(f"  {name} {rows}x{cols} {dname} ...", file=sys.stderr, flush=True)
                results += harness.bench_loss(
                    "bce_pos_weight",
                    name,
                    functools.partial(fn, pos_weight=pos_weight),
                    functools.partial(torch.randn, rows, cols, device=device, dtype=dtype),
                    (target,),
                    shape=f"{rows}x{cols}",
                    dtype=dname,
                    device=device,
                    modes=modes,
                    reps=reps,
                    bytes_by_mode={"fwd": 2 * nbytes, "fwd+bwd": 3 * nbytes},
                )
                harness.checkpoint("bce_with_logits", device, results, copy_gbps, args.out)
    harness.finish(results, copy_gbps)
    harness.print_table(results)
    path = harness.write_json("bce_with_logits", device, results, copy_gbps, args.out)
    print(f"# {len(results)} results in {time.perf_counter() - started:.0f} s -> {path}")
    return results


if __name__ == "__main__":
    main()
