"""Loads the compiled extension; refuses early (not SIGILL) on a CPU it was not built for."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpu_supports_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # cannot tell (not Linux): trust the build
    return " avx2" in flags and " fma" in flags


def load_extension():
    try:
        from . import _build_info
    except ImportError as exc:  # pragma: no cover - only in an unbuilt source tree
        raise ImportError(
            "logitops is not built: run `pip install --no-build-isolation -e .` in the source tree"
        ) from exc
    if _build_info.CPU_ISA == "avx2" and not _cpu_supports_avx2():
        raise ImportError(
            "this build of logitops uses AVX2/FMA, which this CPU lacks; rebuild with "
            "LOGITOPS_CPU_ISA=generic pip install --no-build-isolation ."
        )
    if cuda_emulation_requested():
        if not getattr(_build_info, "WITH_CUDA_EMULATION", False):
            raise ImportError(
                "LOGITOPS_CUDA_EMULATION=1 but this build has no CUDA emulation library; build "
                "it with LOGITOPS_CUDA_EMULATION=1 pip install --no-build-isolation -e ."
            )
        # The CUDA launchers and kernels, run on CPU tensors (csrc/emulation), instead of the
        # CPU kernels: both register the same ops for the CPU dispatch key.
        from . import _C_emulation  # noqa: F401
    else:
        from . import _C  # noqa: F401  (registers the torch.ops.logitops kernels)

    return _build_info


def cuda_emulation_requested() -> bool:
    return os.environ.get("LOGITOPS_CUDA_EMULATION", "0") not in ("", "0", "false", "off", "no")
