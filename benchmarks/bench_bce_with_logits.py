"""BCE-with-logits: logitops vs PyTorch eager and torch.compile, same run.

Bytes counted (minimal traffic): forward reads input and target (2*N*C*s); forward+backward also
writes the gradient (3*N*C*s). weight / pos_weight broadcast along rows: O(C), not counted.

    python benchmarks/bench_bce_with_logits.py --quick
"""

from __future__ import annotations

import argparse
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--modes", default="fwd,bwd,fwd+bwd")
    parser.add_argument("--providers", default=None, help="comma-separated subset")
    parser.add_argument("--shapes", default=None, help="e.g. 4096x8192")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    device = args.device
    reps = args.reps or (50 if device == "cuda" else 7)
    shapes = (
        [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        if args.shapes
        else shapes_for(device, args.quick)
    )
    modes = args.modes.split(",")
    found = {
        "logitops": logitops.binary_cross_entropy_with_logits,
        "torch": F.binary_cross_entropy_with_logits,
        "torch.compile": torch.compile(F.binary_cross_entropy_with_logits, dynamic=False),
    }
    if args.providers:
        found = {k: v for k, v in found.items() if k in set(args.providers.split(","))}

    copy_gbps = harness.copy_bandwidth_gbps(device)
    print(f"# {harness.device_name(device)}, torch {torch.__version__}, copy {copy_gbps:.1f} GB/s")
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
    harness.finish(results, copy_gbps)
    harness.print_table(results)
    path = harness.write_json("bce_with_logits", device, results, copy_gbps, args.out)
    print(f"# {len(results)} results in {time.perf_counter() - started:.0f} s -> {path}")
    return results


if __name__ == "__main__":
    main()
