"""logitops: fused C++/CUDA kernels for everything that happens to logits."""

from __future__ import annotations

from importlib import metadata as _metadata

import torch

from ._loader import cuda_emulation_requested, load_extension

_build_info = load_extension()

from . import calibration, functional, generation, nn, ops, processors  # noqa: E402
from .functional import (  # noqa: E402
    BeamSearchStep,
    beam_search_step,
    binary_cross_entropy_with_logits,
    chain_speculative_sampling,
    chain_speculative_sampling_from_logits,
    cross_entropy,
    distillation_loss,
    filter_logits,
    kl_div_with_logits,
    linear_cross_entropy,
    linear_token_logprobs,
    min_p_filter,
    sample,
    token_logprobs,
    top_k_filter,
    top_p_filter,
)
from .functional.logprobs import (  # noqa: E402
    SampleLogprobs,
    TopLogprobs,
    sample_with_logprobs,
    top_logprobs,
)
from .functional.probs import (  # noqa: E402
    min_p_sampling_from_probs,
    renorm_probs,
    sample_from_probs,
    sampling_from_probs,
    softmax,
    top_k_mask_logits,
    top_k_renorm_probs,
    top_k_sampling_from_probs,
    top_k_top_p_sampling_from_probs,
    top_p_renorm_probs,
    top_p_sampling_from_probs,
)

try:  # the one source of the version is pyproject.toml, through the installed metadata
    __version__ = _metadata.version("logitops")
except _metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BeamSearchStep",
    "__version__",
    "beam_search_step",
    "binary_cross_entropy_with_logits",
    "build_info",
    "calibration",
    "chain_speculative_sampling",
    "chain_speculative_sampling_from_logits",
    "cross_entropy",
    "cuda_kernels_available",
    "distillation_loss",
    "kl_div_with_logits",
    "linear_cross_entropy",
    "linear_token_logprobs",
    "filter_logits",
    "functional",
    "generation",
    "min_p_filter",
    "nn",
    "ops",
    "processors",
    "sample",
    "token_logprobs",
    "top_k_filter",
    "top_p_filter",
    "SampleLogprobs",
    "TopLogprobs",
    "sample_with_logprobs",
    "top_logprobs",
    "min_p_sampling_from_probs",
    "renorm_probs",
    "sample_from_probs",
    "sampling_from_probs",
    "softmax",
    "top_k_mask_logits",
    "top_k_renorm_probs",
    "top_k_sampling_from_probs",
    "top_k_top_p_sampling_from_probs",
    "top_p_renorm_probs",
    "top_p_sampling_from_probs",
]


def cuda_kernels_available() -> bool:
    """Whether this build of logitops contains CUDA kernels (not whether a GPU is visible).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> logitops.cuda_kernels_available() == logitops.build_info()["cuda_kernels"]
    True
    """
    return bool(_build_info.WITH_CUDA)


def build_info() -> dict[str, object]:
    """What this build contains: CPU instruction set, CUDA kernels, and the torch it runs on.

    Returns
    -------
    dict
        ``version``, ``cpu_isa`` ("avx2" or "generic"), ``cuda_kernels`` (bool),
        ``cuda_emulation`` (whether the ops run the CUDA kernels on CPU tensors), ``ops`` (every
        registered op), ``ops_with_cuda_kernel``, ``composite_ops``, ``torch`` and
        ``torch_cuda`` (the versions it runs on).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> info = logitops.build_info()
    >>> info["cpu_isa"] in ("avx2", "generic"), info["torch"] == torch.__version__
    (True, True)
    >>> "cross_entropy_forward" in info["ops"]
    True
    """

    def has_kernel(name: str, key: str) -> bool:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"logitops::{name}", key)

    ops_with_cuda = sorted(name for name in _registered_ops() if has_kernel(name, "CUDA"))
    # Composite ops run on any device through the other ops (linear_cross_entropy_*).
    composite = sorted(
        name for name in _registered_ops() if has_kernel(name, "CompositeExplicitAutograd")
    )
    return {
        "version": __version__,
        "cpu_isa": _build_info.CPU_ISA,
        "cuda_kernels": bool(_build_info.WITH_CUDA),
        # True when the ops run the CUDA launchers and kernels on CPU tensors (csrc/emulation).
        "cuda_emulation": cuda_emulation_requested(),
        "ops": _registered_ops(),
        "ops_with_cuda_kernel": ops_with_cuda,
        "composite_ops": composite,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }


def _registered_ops() -> list[str]:
    return sorted(
        name.split("::", 1)[1]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("logitops::")
    )
