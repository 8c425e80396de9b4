"""Every user-facing argument check shared by the public layers (functional, distributed,
calibration, nn): tensor kinds and devices, the cross-entropy options, the class-index range and
the switch that turns the CUDA range check off. Nothing here imports the public layers, so any of
them can import it.

Checks that belong to one family only (sampling's per-row parameters, distributed's layout
agreement, calibration's labels) stay with that family.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from .ops._common import REDUCTIONS, is_plain_eager_tensor

__all__ = [
    "FLOATING_DTYPES",
    "check_cross_entropy_options",
    "check_floating",
    "check_causal_lm_model",
    "check_linear_arguments",
    "check_patch_options",
    "check_reduction",
    "check_same_device",
    "check_target_range",
    "is_finite",
    "validate_cuda_targets_enabled",
]

FLOATING_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_floating(name: str, tensor: Tensor) -> None:
    """A tensor of one of the kernels' floating dtypes (TypeError otherwise)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOATING_DTYPES:
        raise TypeError(f"{name} must be float32, float64, bfloat16 or float16, got {tensor.dtype}")


def check_same_device(name: str, tensor: Tensor, reference: Tensor) -> None:
    """``tensor`` on the device of the ``reference`` input (ValueError otherwise)."""
    if tensor.device != reference.device:
        raise ValueError(
            f"{name} is on {tensor.device} but input is on {reference.device}; "
            "move them to the same device"
        )


def check_reduction(reduction: str) -> str:
    """One of torch's loss reductions, 'none', 'mean' or 'sum' (ValueError otherwise)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")
    return reduction


def is_finite(value: float) -> bool:
    """Whether a Python number is finite. Comparisons rather than math.isfinite: dynamo traces
    them when torch.compile(dynamic=True) turns Python floats into symbolic ones."""
    return value == value and value != math.inf and value != -math.inf


def check_cross_entropy_options(
    label_smoothing: float, z_loss: float, softcap: float | None
) -> None:
    """The options every cross-entropy form takes: label_smoothing in [0, 1], z_loss finite and
    >= 0, softcap None or finite and > 0."""
    if not (0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not (is_finite(z_loss) and float(z_loss) >= 0.0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss}")
    if softcap is not None and not (is_finite(softcap) and float(softcap) > 0.0):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap}")


def validate_cuda_targets_enabled() -> bool:
    """Whether CUDA class-index targets are range-checked before the kernel (one host sync).

    The kernels never read out of bounds for a bad target (they write NaN for that row), so
    turning this off with LOGITOPS_VALIDATE_TARGETS=0 trades the exception for no sync.
    """
    return os.environ.get("LOGITOPS_VALIDATE_TARGETS", "1") not in ("0", "false", "off")


def check_target_range(
    target: Tensor,
    num_classes: int,
    ignore_index: int,
    *,
    prefix: str = "cross_entropy: ",
    expected: str = "a class index",
) -> None:
    """IndexError naming the first target outside [0, num_classes) that is not ignore_index.
    Skipped where reading the values on the host is not possible (traced) or not allowed (CUDA
    graph capture): the kernels write NaN for that row instead."""
    if not is_plain_eager_tensor(target):
        return  # traced (torch.compile): no host sync; the kernels write NaN for a bad target
    if target.is_cuda and torch.cuda.is_current_stream_capturing():
        return  # a sync would break the CUDA graph capture; the kernels write NaN instead
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):  # one host sync; LOGITOPS_VALIDATE_TARGETS=0 skips it
        position = int(bad.nonzero()[0, 0])
        raise IndexError(
            f"{prefix}target[{position}] = {int(target[position])} is out of range; "
            f"expected {expected} in [0, {num_classes}) or ignore_index ({ignore_index})"
        )


def check_linear_arguments(
    input: Tensor, linear_weight: Tensor, linear_bias: Tensor | None
) -> None:
    """input [..., H], linear_weight [V, H] and linear_bias [V], floating, on one device (V is a
    rank's slice in the vocabulary-parallel variant)."""
    check_floating("input", input)
    check_floating("linear_weight", linear_weight)
    check_same_device("linear_weight", linear_weight, input)
    if linear_weight.dim() != 2 or input.dim() < 1 or input.shape[-1] != linear_weight.shape[1]:
        raise ValueError(
            f"linear_weight must be [vocab, {input.shape[-1] if input.dim() else '?'}] for input "
            f"of shape {tuple(input.shape)}, got {tuple(linear_weight.shape)}"
        )
    if linear_bias is not None:
        check_floating("linear_bias", linear_bias)
        check_same_device("linear_bias", linear_bias, input)
        if linear_bias.shape != (linear_weight.shape[0],):
            raise ValueError(
                f"linear_bias must be [{linear_weight.shape[0]}], got {tuple(linear_bias.shape)}"
            )


# The loss options logitops.integrations.transformers.apply passes to the fused loss.
PATCH_OPTIONS = ("chunk_size", "label_smoothing", "z_loss")
PATCH_MODES = ("fused", "loss_function")


def check_causal_lm_model(model: object) -> None:
    """A causal language model with an LM head: a torch.nn.Module with a ``config`` and an
    ``lm_head`` that is a torch.nn.Linear (TypeError otherwise)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not hasattr(model, "config"):
        raise TypeError(
            f"model must be a transformers model with a config, got {type(model).__name__}"
        )
    head = getattr(model, "lm_head", None)
    if not isinstance(head, torch.nn.Linear):
        found = "none" if head is None else type(head).__name__
        raise TypeError(
            f"model must have an lm_head that is a torch.nn.Linear (a *ForCausalLM), "
            f"{type(model).__name__} has {found}"
        )


def check_patch_options(mode: str, options: dict, fused_in_eval: bool = False) -> None:
    """``mode`` 'fused' or 'loss_function'; options among chunk_size, label_smoothing, z_loss
    (chunk_size only in the fused mode), with the values the cross-entropy accepts;
    ``fused_in_eval`` a bool, True only in the fused mode."""
    if mode not in PATCH_MODES:
        raise ValueError(f"mode must be one of 'fused', 'loss_function', got {mode!r}")
    if not isinstance(fused_in_eval, bool):
        raise TypeError(f"fused_in_eval must be a bool, got {type(fused_in_eval).__name__}")
    if fused_in_eval and mode != "fused":
        raise ValueError("fused_in_eval applies only to mode='fused', got mode='loss_function'")
    unknown = sorted(set(options) - set(PATCH_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown loss option {unknown[0]!r}; expected some of {', '.join(PATCH_OPTIONS)}"
        )
    chunk_size = options.get("chunk_size")
    if chunk_size is not None:
        if mode != "fused":
            raise ValueError("chunk_size applies only to mode='fused', got mode='loss_function'")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    label_smoothing, z_loss = options.get("label_smoothing", 0.0), options.get("z_loss", 0.0)
    check_cross_entropy_options(label_smoothing, z_loss, None)
