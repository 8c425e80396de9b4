"""Distillation: logitops' fused divergence vs the PyTorch composition (log_softmax + kl_div)
and torch.compile of it, forward KL at T = 2, same run.

Bytes counted (minimal traffic): forward reads student and teacher (2*N*V*s); forward+backward
also writes the student's gradient (3*N*V*s).

    python benchmarks/bench_distillation.py --quick
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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TEMPERATURE = 2.0


def composition(student, teacher):
    """The usual PyTorch distillation term: KL(softmax(t/T) || softmax(s/T)), batchmean."""
    return F.kl_div(
        F.log_softmax(student / TEMPERATURE, -1),
        F.log_softmax(teacher / TEMPERATURE, -1),
        log_target=True,
        reduction="batchmean",
    )


def ours(student, teacher):
    return logitops.kl_div_with_logits(student, teacher, temperature=TEMPERATURE)


def main(argv=None) -> list[harness.Measurement]:
    args = harness.loss_arguments(argv, __doc__, dtypes=None, modes="fwd,fwd+bwd")
    device, reps, modes = args.device, args.reps, args.modes
    if args.shapes:
        shapes = args.shapes
    elif device == "cuda":
        shapes = [(4096, 32000), (8192, 128256)]
    else:
        shapes = [(4096, 32000)] if args.quick else [(4096, 32000), (1024, 128256)]
    found = {
        "logitops": ours,
        "torch": composition,
        "torch.compile": torch.compile(composition, dynamic=False),
    }
    found = harness.keep_providers(found, args.providers)
    copy_gbps = harness.announce(device)
    results: list[harness.Measurement] = []
    started = time.perf_counter()
    for rows, vocab in harness.progress(shapes, "shapes"):
        for dname in (args.dtypes or ("fp32" if args.quick else "fp32,bf16")).split(","):
            dtype = DTYPES[dname]
            teacher = torch.randn(rows, vocab, device=device, dtype=dtype)
            nbytes = rows * vocab * dtype.itemsize
            for name, fn in found.items():
                if name == "torch.compile":
                    torch._dynamo.reset()
                results += harness.bench_loss(
                    "distill_fwd_kl",
                    name,
                    fn,
                    functools.partial(torch.randn, rows, vocab, device=device, dtype=dtype),
                    (teacher,),
                    shape=f"{rows}x{vocab}",
                    dtype=dname,
                    device=device,
                    modes=modes,
                    reps=reps,
                    bytes_by_mode={"fwd": 2 * nbytes, "fwd+bwd": 3 * nbytes},
                )
                harness.checkpoint("distillation", device, results, copy_gbps, args.out)
    harness.finish(results, copy_gbps)
    harness.print_table(results)
    path = harness.write_json("distillation", device, results, copy_gbps, args.out)
    print(f"# {len(results)} results in {time.perf_counter() - started:.0f} s -> {path}")
    return results


if __name__ == "__main__":
    main()
