"""The vector twins of the CPU kernels (csrc/cpu/vec_math.h) against their scalar formulas
(csrc/common/logit_math.h): tests/cpu/vec_math_test.cpp, compiled here with the instruction set the
CPU kernels were built for, compares them lane by lane on random and edge inputs (-inf, +inf, NaN,
huge, 0) in float and double. The kernels run the vector twin on whole vectors of a row and the
scalar formula on its last elements, so a twin that drifts from its formula would make a row's
gradient depend on where an element falls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from logitops import _build_info

ROOT = Path(__file__).resolve().parents[1]
COMPILER = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
# The flags setup.py gives the CPU kernels for each instruction set.
ISA_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "generic": [],
}

pytestmark = pytest.mark.skipif(COMPILER is None, reason="needs a host C++ compiler")


@pytest.fixture(scope="module")
def vec_math_test(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vec_math") / "vec_math_test"
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    libraries = cpp_extension.library_paths()
    command = [
        COMPILER,
        "-std=c++20",
        "-O2",
        "-Wall",
        "-Wno-unknown-pragmas",
        *ISA_FLAGS[_build_info.CPU_ISA],
        *includes,
        str(ROOT / "tests" / "cpu" / "vec_math_test.cpp"),
        "-o",
        str(out),
        *[f"-L{path}" for path in libraries],
        *[f"-Wl,-rpath,{path}" for path in libraries],
        "-lc10",
        "-ltorch_cpu",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_vector_twins_match_scalar_formulas(vec_math_test):
    result = subprocess.run([str(vec_math_test)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 mismatches" in result.stdout
    # Every twin was checked in both precisions.
    for name in ("cross_entropy_grad", "soft_target_grad", "forward_kl_term", "bce_grad"):
        assert f"ok {name}<float>" in result.stdout
        assert f"ok {name}<double>" in result.stdout
