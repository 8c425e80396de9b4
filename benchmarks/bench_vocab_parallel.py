"""Vocabulary-parallel cross-entropy, one rank: logitops.distributed's path (per-slice statistics,
their exchange, the combined loss and the slice's gradient) vs torch's cross-entropy on the
gathered logits (the slices all-gathered, differentiably, then F.cross_entropy, eager and
torch.compile), and logitops' single-device cross-entropy on the same gathered logits
("logitops.cross_entropy"), same run.
With one rank the collectives move nothing between devices: this times the path's own cost.

The group: gloo on the CPU, NCCL on a GPU (gloo where torch has no NCCL), one rank in this
process, unless the caller already initialized one. Bytes counted as for cross-entropy (minimal
traffic): forward reads N*V*s; forward+backward also writes the N*V*s gradient.

    python benchmarks/bench_vocab_parallel.py --quick
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
import warnings
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.nn.functional as dist_nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

import logitops  # noqa: E402
import logitops.distributed  # noqa: E402


def shapes_for(args) -> list[tuple[int, int]]:
    if args.device == "cuda":
        return [(4096, 32000), (8192, 128256)] + ([] if args.quick else [(16384, 128256)])
    return [(256, 32000)] if args.quick else [(4096, 32000), (1024, 128256)]


def gathered(local):
    """The full logits from every rank's slice (differentiable: the backward scatters)."""
    with warnings.catch_warnings():  # deprecated for the private _functional_collectives
        warnings.simplefilter("ignore", FutureWarning)
        parts = dist_nn.all_gather(local)
    return torch.cat(parts, dim=-1)


def torch_on_gathered(local, target):
    return F.cross_entropy(gathered(local), target)


def logitops_on_gathered(local, target):
    return logitops.cross_entropy(gathered(local), target)


def providers(device: str) -> dict[str, dict[str, object]]:
    return {
        "vocab_parallel": {
            "logitops": logitops.distributed.vocab_parallel_cross_entropy,
            "torch": torch_on_gathered,
            "torch.compile": torch.compile(torch_on_gathered, dynamic=False),
            "logitops.cross_entropy": logitops_on_gathered,
        }
    }


def inputs(op, shape, dtype, device) -> harness.Inputs:
    rows, vocab = shape
    nbytes = rows * vocab * dtype.itemsize
    return harness.Inputs(
        functools.partial(torch.randn, rows, vocab, device=device, dtype=dtype),
        (torch.randint(0, vocab, (rows,), device=device),),
        bytes_by_mode={"fwd": nbytes, "fwd+bwd": 2 * nbytes},
    )


@contextlib.contextmanager
def one_rank_group(args):
    """A process group of one rank for the run (torn down after), or the caller's."""
    if dist.is_initialized():
        yield
        return
    backend = "nccl" if args.device == "cuda" and dist.is_nccl_available() else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(
            backend, init_method=f"file://{Path(tmp) / 'store'}", rank=0, world_size=1
        )
        try:
            yield
        finally:
            dist.destroy_process_group()


FAMILY = harness.Family(
    "vocab_parallel",
    __doc__,
    providers,
    inputs,
    shapes_for,
    dtypes="fp32,bf16",
    context=one_rank_group,
)


def main(argv=None) -> list[harness.Measurement]:
    if not dist.is_available():
        sys.exit("torch.distributed is not available in this torch")
    return harness.run_family(FAMILY, argv)


if __name__ == "__main__":
    main()
