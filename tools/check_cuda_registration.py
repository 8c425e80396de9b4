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
missing = [
    name
    for name in info["ops"]
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"logitops::{name}", "CUDA")
]
if missing:
    sys.exit(f"ops without a CUDA kernel: {missing}")
print(f"all {len(info['ops'])} ops have CPU and CUDA kernels")
