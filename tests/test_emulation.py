"""The CUDA emulator (csrc/emulation) tested on its own: tests/emulation/selftest.cpp, compiled
here with the host compiler against the toolkit's headers (no torch, no GPU), once plainly and
once under ThreadSanitizer. Each case runs in its own process.

- a kernel that reads another thread's shared-memory slot without a barrier is reported as a data
  race by ThreadSanitizer, and the same kernel with __syncthreads is not;
- a barrier reached by part of the block, a warp shuffle missing a lane of its mask, a misaligned
  16-byte vector access and a block over the launch limits are errors naming the kernel;
- warp intrinsics, atomics and the real cross-entropy kernels give the right values (the latter
  also under ThreadSanitizer, with no report).

The emulated suite itself is `LOGITOPS_CUDA_EMULATION=1 python -m pytest` (see the README).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
COMPILER = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")

pytestmark = pytest.mark.skipif(
    COMPILER is None or not (CUDA_HOME / "include" / "cuda_runtime.h").exists(),
    reason="needs a host C++ compiler and the CUDA toolkit's headers (CUDA_HOME)",
)


def _build(tmp_path_factory, name: str, flags: list[str]) -> Path:
    out = tmp_path_factory.mktemp(name) / "selftest"
    command = [
        COMPILER,
        "-std=c++20",
        "-O1",
        "-g",
        "-DLOGITOPS_CUDA_EMULATION",
        "-Wall",
        "-Werror",
        "-Wno-unknown-pragmas",
        f"-I{CUDA_HOME / 'include'}",
        *flags,
        str(ROOT / "tests" / "emulation" / "selftest.cpp"),
        str(ROOT / "csrc" / "emulation" / "emulator.cpp"),
        "-o",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    return _build(tmp_path_factory, "plain", [])


@pytest.fixture(scope="module")
def selftest_tsan(tmp_path_factory):
    probe = subprocess.run(
        [COMPILER, "-fsanitize=thread", "-x", "c++", "-", "-o", os.devnull],
        input="int main() { return 0; }",
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip("the compiler has no ThreadSanitizer runtime")
    return _build(tmp_path_factory, "tsan", ["-fsanitize=thread"])


def _run(binary: Path, case: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0 exitcode=66")
    return subprocess.run([str(binary), case], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    "case",
    [
        "synchronized",
        "divergent_barrier",
        "partial_warp",
        "misaligned",
        "traffic",
        "launch_limits",
        "warp_ops",
        "cross_entropy",
    ],
)
def test_case_behaves(selftest, case):
    result = _run(selftest, case)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok"), result.stdout


def test_divergent_barrier_message_names_kernel_and_counts(selftest):
    out = _run(selftest, "divergent_barrier").stdout
    assert "kernel divergent_barrier_kernel" in out
    assert "__syncthreads reached by 16 of 64 threads (48 exited without reaching it)" in out


def test_missing_barrier_is_a_data_race_under_tsan(selftest_tsan):
    racy = _run(selftest_tsan, "race")
    assert "ThreadSanitizer: data race" in racy.stderr, racy.stderr[-3000:]
    assert "neighbour_kernel" in racy.stderr


@pytest.mark.parametrize("case", ["synchronized", "warp_ops", "cross_entropy"])
def test_synchronized_kernels_are_clean_under_tsan(selftest_tsan, case):
    result = _run(selftest_tsan, case)
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout
