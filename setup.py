"""Builds logitops._C: C++ CPU kernels always, CUDA kernels when a CUDA torch and toolkit exist.

Environment:
  LOGITOPS_CUDA=0|1        0 forces a CPU-only build; 1 makes a missing CUDA toolkit an error.
  LOGITOPS_CPU_ISA=avx2|generic
                           CPU kernels' instruction set (default: avx2 when this machine has it).
  TORCH_CUDA_ARCH_LIST     CUDA archs; default: the visible GPUs, or "8.0;9.0+PTX" without one.
  LOGITOPS_PTXAS_VERBOSE=1 print ptxas register / spill reports.
  LOGITOPS_CUDA_EMULATION=1
                           also build logitops._C_emulation: the CUDA launchers and kernels
                           (csrc/cuda) compiled as host C++ against csrc/emulation, run on CPU
                           tensors; `LOGITOPS_CUDA_EMULATION=1 python ...` imports it instead of
                           the CPU kernels. Needs the CUDA toolkit's headers, not a GPU.
  MAX_JOBS, NVCC_THREADS   parallel compile jobs / nvcc threads per job.
"""

from __future__ import annotations

import glob
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _env_flag(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value in (None, "") else value.strip().lower()


def _resolve_cuda_home() -> str | None:
    """CUDA_HOME / CUDA_PATH, else the toolkit behind `nvcc` (following symlinks and the
    wrapper scripts that some distributions put on PATH)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home).resolve())
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        candidate = real.parent.parent
        if (candidate / "include" / "cuda.h").exists():
            return str(candidate)
        # A wrapper script: look for an absolute nvcc path inside it.
        try:
            text = real.read_text(errors="ignore")
        except OSError:
            text = ""
        for token in text.replace('"', " ").replace("'", " ").split():
            if token.endswith("/bin/nvcc") and Path(token).exists():
                return str(Path(token).resolve().parent.parent)
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda"
    return None


def _cpu_has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _cuda_wanted() -> tuple[bool, str | None]:
    import torch

    mode = _env_flag("LOGITOPS_CUDA")
    if mode in ("0", "false", "off", "no"):
        return False, None
    cuda_home = _resolve_cuda_home()
    ok = torch.version.cuda is not None and cuda_home is not None
    if not ok and mode in ("1", "true", "on", "yes"):
        why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA toolkit found"
        sys.exit(
            f"LOGITOPS_CUDA=1 but CUDA kernels cannot be built: {why} "
            "(set CUDA_HOME to the toolkit, e.g. /usr/local/cuda)"
        )
    return ok, cuda_home


def _extension():
    from torch.utils import cpp_extension

    build_cuda, cuda_home = _cuda_wanted()
    isa = _env_flag("LOGITOPS_CPU_ISA") or ("avx2" if _cpu_has_avx2() else "generic")
    # -fopenmp: at::parallel_for runs on OpenMP only if the extension is compiled with it.
    cxx_flags = ["-O3", "-g0", "-fvisibility=hidden", "-fopenmp"]
    if isa == "avx2":
        cxx_flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    _write_build_info(isa=isa, cuda=build_cuda, emulation=_emulation_wanted())

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/host/*.cpp"))
    sources += sorted(glob.glob("csrc/cpu/*.cpp"))
    define_macros = [("Py_LIMITED_API", "0x030A0000")]
    if not build_cuda:
        return cpp_extension.CppExtension(
            "logitops._C",
            sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
            define_macros=define_macros,
            py_limited_api=True,
        )

    os.environ["CUDA_HOME"] = cuda_home
    cpp_extension.CUDA_HOME = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        import torch

        if not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-DLOGITOPS_WITH_CUDA"]
    nvcc_flags.append(f"--threads={os.environ.get('NVCC_THREADS', '2')}")
    if _env_flag("LOGITOPS_PTXAS_VERBOSE") in ("1", "true"):
        nvcc_flags.append("-Xptxas=-v")
    include_dirs = []
    # cuBLAS / cuSPARSE headers that ATen's CUDA headers include live in the nvidia wheels.
    for site in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
            inc = Path(site) / sub
            if inc.is_dir():
                include_dirs.append(str(inc))
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    return cpp_extension.CUDAExtension(
        "logitops._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags + ["-DLOGITOPS_WITH_CUDA"], "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"],
        define_macros=define_macros,
        py_limited_api=True,
    )


def _emulation_wanted() -> bool:
    return _env_flag("LOGITOPS_CUDA_EMULATION") in ("1", "true", "on", "yes")


def _emulation_extension():
    """logitops._C_emulation: schemas, composite ops and the CUDA launchers with their kernels,
    compiled as host C++ (each .cu through a generated .cpp that includes it: one source)."""
    from torch.utils import cpp_extension

    cuda_home = _resolve_cuda_home()
    if cuda_home is None or not (Path(cuda_home) / "include" / "cuda_runtime.h").exists():
        sys.exit(
            "LOGITOPS_CUDA_EMULATION=1 needs the CUDA toolkit's headers (cuda_runtime.h, "
            "cuda_bf16.h, cuda_fp16.h): set CUDA_HOME, e.g. /usr/local/cuda"
        )
    wrappers = ROOT / "build" / "emulation_sources"
    wrappers.mkdir(parents=True, exist_ok=True)
    sources = ["csrc/bindings.cpp", "csrc/linear_cross_entropy.cpp"]
    sources += sorted(glob.glob("csrc/host/*.cpp"))
    sources += ["csrc/emulation/emulator.cpp", "csrc/emulation/traffic_ops.cpp"]
    for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        wrapper = wrappers / f"{cu.stem}.cpp"
        text = f'// Generated by setup.py: {cu.name} as host C++ (emulation).\n#include "{cu}"\n'
        if not wrapper.exists() or wrapper.read_text() != text:
            wrapper.write_text(text)
        sources.append(str(wrapper.relative_to(ROOT)))
    flags = ["-O2", "-g0", "-fvisibility=hidden", "-DLOGITOPS_CUDA_EMULATION"]
    flags += ["-Wno-unknown-pragmas", "-Wno-attributes"]
    flags += shlex.split(os.environ.get("LOGITOPS_EMULATION_CFLAGS", ""))
    return cpp_extension.CppExtension(
        "logitops._C_emulation",
        sources,
        include_dirs=[str(Path(cuda_home) / "include")],
        extra_compile_args={"cxx": flags},
        extra_link_args=shlex.split(os.environ.get("LOGITOPS_EMULATION_LDFLAGS", "")),
        define_macros=[("Py_LIMITED_API", "0x030A0000")],
        py_limited_api=True,
    )


def _write_build_info(*, isa: str, cuda: bool, emulation: bool) -> None:
    (ROOT / "logitops" / "_build_info.py").write_text(
        "# Written by setup.py: what this build of logitops._C contains.\n"
        f"CPU_ISA = {isa!r}\nWITH_CUDA = {cuda!r}\nWITH_CUDA_EMULATION = {emulation!r}\n"
    )


def main() -> None:
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=[_extension()] + ([_emulation_extension()] if _emulation_wanted() else []),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )


if __name__ == "__main__":
    main()
