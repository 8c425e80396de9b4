"""Checks the SASS of a CUDA build: every kernel that streams a gradient or loss out must store it
with 128-bit global stores (STG.E[.hint].128), and every row kernel must read its rows with
128-bit loads, in every instantiation and for every architecture the build holds.

A vector store the compiler splits into one store per element (as the cross-entropy backward's
once was: 8 x STG.E.U16 per 16 bytes of bf16) still computes the right values, so no test can see
it; the SASS can. Needs cuobjdump and nvdisasm (the nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm
wheels work without a GPU).

Usage: python tools/check_sass.py [path/to/_C.abi3.so]  (default: the installed logitops's)
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# Kernels whose output rows are written by store_vector (csrc/cuda/cuda_utils.cuh), and kernels
# that only read rows, by load_vector.
VECTOR_STORE_KERNELS = (
    "cross_entropy_backward_kernel",
    "cross_entropy_fused_kernel",
    "cross_entropy_probs_backward_kernel",
    "cross_entropy_probs_fused_kernel",
    "scale_gradient_kernel",
    "bce_with_logits_kernel",
    "vocab_parallel_backward_kernel",
    "token_logprobs_backward_kernel",
)
VECTOR_LOAD_KERNELS = (
    "calibration_row_stats_kernel",
    "cross_entropy_forward_kernel",
    "cross_entropy_probs_forward_kernel",
    "vocab_parallel_stats_kernel",
    "filter_logits_kernel",
    "sample_kernel",
    "token_logprobs_forward_kernel",
)
STORE_128 = re.compile(r"\bSTG\.E(?:\.[A-Z0-9_]+)*\.128\b")
LOAD_128 = re.compile(r"\bLDG\.E(?:\.[A-Z0-9_]+)*\.128\b")
SCALAR_STORE = re.compile(r"\bSTG\.E(?:\.(?:U8|S8|U16|S16|64))?\s")


def find_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for entry in sys.path:  # the pip wheels put them under nvidia/cu13/bin
        for candidate in glob.glob(os.path.join(entry, "nvidia", "*", "bin", name)):
            return candidate
    sys.exit(f"{name} not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")


def default_library() -> str:
    spec = importlib.util.find_spec("logitops")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("logitops is not installed; pass the path of its _C extension")
    for location in spec.submodule_search_locations:
        for path in glob.glob(os.path.join(location, "_C*.so")):
            if "emulation" not in path:
                return path
    sys.exit("no logitops/_C*.so found")


def sass_by_function(library: str) -> dict[tuple[str, str], list[str]]:
    """(architecture, mangled function name) -> its SASS lines."""
    cuobjdump = find_tool("cuobjdump")
    nvdisasm = find_tool("nvdisasm")
    env = dict(os.environ, PATH=f"{Path(nvdisasm).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run(
        [cuobjdump, "-sass", library], capture_output=True, text=True, env=env, check=True
    ).stdout
    functions: dict[tuple[str, str], list[str]] = defaultdict(list)
    arch, function = "?", None
    for line in out.splitlines():
        if m := re.search(r"code for (sm_\d+)", line):
            arch = m.group(1)
        elif m := re.search(r"Function : (\S+)", line):
            function = m.group(1)
        elif function is not None:
            functions[(arch, function)].append(line)
    return functions


def main() -> int:
    library = sys.argv[1] if len(sys.argv) > 1 else default_library()
    functions = sass_by_function(library)
    checked, failures = 0, []
    for (arch, name), lines in sorted(functions.items()):
        kernel = next((k for k in VECTOR_STORE_KERNELS + VECTOR_LOAD_KERNELS if k in name), None)
        if kernel is None:
            continue
        checked += 1
        text = "\n".join(lines)
        stores, loads = len(STORE_128.findall(text)), len(LOAD_128.findall(text))
        scalar = len(SCALAR_STORE.findall(text))
        print(
            f"{arch} {kernel:38s} 128-bit stores {stores:3d}, loads {loads:3d}; other {scalar:3d}"
        )
        if (kernel in VECTOR_STORE_KERNELS and stores == 0) or loads == 0:
            failures.append(f"{arch} {name}: {stores} 128-bit stores, {loads} 128-bit loads")
    if checked == 0:
        print(f"none of the kernels {VECTOR_STORE_KERNELS + VECTOR_LOAD_KERNELS} in {library}")
        return 1
    if failures:
        print("kernels without 128-bit global accesses:", *failures, sep="\n  ")
        return 1
    print(f"{checked} kernel instantiations use 128-bit global loads and stores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
