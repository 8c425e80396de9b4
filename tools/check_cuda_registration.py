"""Fails unless the installed logitops was built with CUDA and every op has a CUDA kernel.

Run from outside the source tree so the installed package is imported.
"""

from __future__ import annotations

import sys

import torch

import logitops

info = logitops.build_info()
print(info)
if not logitops.cuda_kernels_available():
    sys.exit("logitops was built without CUDA kernels")
kernel_ops = [name for name in info["ops"] if name not in info["composite_ops"]]
missing = [
    name
    for name in kernel_ops
    if not all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"logitops::{name}", key)
        for key in ("CPU", "CUDA")
    )
]
if missing:
    sys.exit(f"ops without a CPU or CUDA kernel: {missing}")
print(
    f"all {len(kernel_ops)} kernel ops have CPU and CUDA kernels; "
    f"{len(info['composite_ops'])} composite ops over them: {info['composite_ops']}"
)
