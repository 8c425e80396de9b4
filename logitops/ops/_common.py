"""Op-level helpers shared by the op wrappers: the mode names, dtype rules, which kernels run,
the tracing probe and the scaling of forward-computed gradients. The user-facing argument checks
are in logitops._validation."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._loader import cuda_emulation_requested

# The ops' mode arguments are strings, spelled as the public functions (and torch's losses) spell
# them; csrc/host/modes.cpp parses each into its enum of csrc/common/modes.h, the one table.
REDUCTIONS = ("none", "mean", "sum")
REDUCTION_NONE, REDUCTION_MEAN, REDUCTION_SUM = REDUCTIONS
# The distillation ops' reductions: batchmean is the mean over the counted rows.
REDUCTION_BATCHMEAN = "batchmean"
DISTILLATION_REDUCTIONS = (REDUCTION_NONE, REDUCTION_BATCHMEAN, REDUCTION_SUM)
MEAN_REDUCTIONS = (REDUCTION_MEAN, REDUCTION_BATCHMEAN)
# Divergences of the distillation ops: KL(teacher || student), KL(student || teacher), JSD(beta).
DIVERGENCE_KINDS = ("forward", "reverse", "jsd")


# Under CUDA emulation the ops on CPU tensors are the CUDA launchers (logitops._C_emulation), and
# the Python layer takes the paths it takes for CUDA tensors, so that those are what runs.
CUDA_EMULATION = cuda_emulation_requested()


def runs_cpu_kernels(tensor: torch.Tensor) -> bool:
    """Whether the ops on this tensor are the CPU kernels (a CPU tensor, without emulation)."""
    return tensor.is_cpu and not CUDA_EMULATION  # is_cpu: no device object built per call


def compute_grad(input: torch.Tensor, reduction: str) -> bool:
    """The forward ops' ``compute_grad`` argument: whether the forward also writes the gradient
    (for an upstream gradient of 1), which it does when one will be needed. On the CPU for every
    reduction: the backward then scales it, or returns it as is when the upstream is 1. On CUDA
    for the scalar reductions (the training path), whose backward applies the upstream on the
    device without a host sync (:func:`fused_gradient`): the logits cross memory once each way;
    with per-row upstreams (``none``) the backward's own pass applies them instead."""
    if not (input.requires_grad and torch.is_grad_enabled()):
        return False
    return runs_cpu_kernels(input) or reduction != REDUCTION_NONE


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduce_rows(row_loss: torch.Tensor, reduction: str, denominator: torch.Tensor) -> torch.Tensor:
    """The loss from per-row losses (the Python twin of reduce_row_loss in csrc/): the rows
    themselves (none), their sum (sum), or their sum / ``denominator`` (mean: the total target
    weight or the number of counted rows; NaN for a mean over none)."""
    if reduction == REDUCTION_NONE:
        return row_loss
    total = row_loss.sum()
    return total / denominator if reduction in MEAN_REDUCTIONS else total


def upstream_scale(
    grad_loss: torch.Tensor, reduction: str, denominator: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """For a scalar reduction, every row's upstream gradient in ``dtype``: ``grad_loss`` (sum)
    or ``grad_loss / denominator`` (mean; 0 for a mean over no row, as cross_entropy's)."""
    scale = grad_loss.to(dtype)
    if reduction in MEAN_REDUCTIONS:
        scale = torch.where(denominator != 0, scale / denominator.to(dtype), 0.0)
    return scale


def rows_upstream(
    grad_loss: torch.Tensor,
    reduction: str,
    denominator: torch.Tensor,
    num_rows: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Each row's upstream gradient, [num_rows] contiguous in ``dtype``, from the upstream
    gradient of the reduced loss (the Python twin of upstream_per_row in csrc/): ``grad_loss``
    itself for reduction none, else :func:`upstream_scale` broadcast to every row."""
    if reduction == REDUCTION_NONE:
        return grad_loss.reshape(num_rows).to(dtype).contiguous()
    return upstream_scale(grad_loss, reduction, denominator, dtype).expand(num_rows).contiguous()


def is_plain_eager_tensor(tensor: torch.Tensor) -> bool:
    """True when reading the tensor's value on the host is safe: not under torch.compile,
    make_fx, fake or functional tracing, not torch.func-wrapped, and not a tensor subclass.
    (The legacy vmap of batched gradients never gets here: needs_composite_backward routes it.)"""
    if torch.compiler.is_compiling() or type(tensor) is not torch.Tensor:
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(tensor):
        return False
    key = torch._C._TorchDispatchModeKey
    for mode in (key.PROXY, key.FAKE, key.FUNCTIONAL):
        if torch._C._get_dispatch_mode(mode) is not None:
            return False
    return True


def fused_gradient(
    ctx,
    forward_grad: torch.Tensor,
    grad_loss: torch.Tensor,
    reduction: str,
    recompute: Callable[[], torch.Tensor],
) -> torch.Tensor:
    r"""The gradient a forward computed (``compute_grad``) times the upstream gradient.

    On the CPU, :func:`scale_forward_grad`. On CUDA, in eager mode, the first backward scales the
    saved gradient in place with ``scale_gradient_``, which reads the upstream on the device and
    does nothing when it is 1 (no host sync, no pass over the gradient); autograd copies the
    result before accumulating if the graph is retained. A later backward through a retained
    graph never modifies it again: it returns the scaled gradient times the ratio of the two
    upstreams (bit for bit the first result when they are equal: backward is reentrant), or,
    where the first upstream was 0, the ``recompute``\ d gradient. Under torch.compile and other
    tracing, out of place."""
    if runs_cpu_kernels(forward_grad) or reduction == REDUCTION_NONE:
        return scale_forward_grad(forward_grad, grad_loss, reduction)
    if not is_plain_eager_tensor(grad_loss) or not is_plain_eager_tensor(forward_grad):
        return forward_grad * grad_loss.to(forward_grad.dtype)
    first = getattr(ctx, "first_upstream", None)
    if first is not None:
        ratio = grad_loss.to(torch.float64) / first
        return torch.where(first != 0, forward_grad * ratio.to(forward_grad.dtype), recompute())
    ctx.first_upstream = grad_loss.detach().to(torch.float64)  # a copy: 0-dim, on the device
    # The saved tensor is modified once, before anything reads it but this backward; keeping its
    # version lets the saved-tensor check of a retained graph's next backward pass.
    with torch.autograd._unsafe_preserve_version_counter(forward_grad):
        torch.ops.logitops.scale_gradient_.default(forward_grad, grad_loss.detach())
    return forward_grad


def scale_forward_grad(
    forward_grad: torch.Tensor, grad_loss: torch.Tensor, reduction: str
) -> torch.Tensor:
    """The gradient a forward computed (``compute_grad``: d loss / d input for an upstream
    gradient of 1) times the
    upstream gradient. Returned as is when the upstream is 1 (the usual `loss.backward()` on
    the CPU, where checking is free), which saves a pass over the input's size; autograd copies
    it before accumulating if it is still saved for a retained graph."""
    if reduction == REDUCTION_NONE:
        return forward_grad * grad_loss.reshape(
            grad_loss.shape + (1,) * (forward_grad.dim() - grad_loss.dim())
        ).to(forward_grad.dtype)
    if is_plain_eager_tensor(grad_loss) and runs_cpu_kernels(grad_loss) and grad_loss.item() == 1:
        return forward_grad
    return forward_grad * grad_loss.to(forward_grad.dtype)


def _plain_eager_call(args: tuple) -> tuple[bool, bool]:
    """(whether every tensor argument is a plain eager tensor, whether one requires grad)."""
    if torch.compiler.is_compiling():
        return False, False
    key = torch._C._TorchDispatchModeKey
    for mode in (key.PROXY, key.FAKE, key.FUNCTIONAL):
        if torch._C._get_dispatch_mode(mode) is not None:
            return False, False
    requires_grad = False
    for arg in args:
        if isinstance(arg, torch.Tensor):
            if type(arg) is not torch.Tensor or torch._C._functorch.is_functorch_wrapped_tensor(
                arg
            ):
                return False, False
            requires_grad = requires_grad or arg.requires_grad
    return True, requires_grad


def register_differentiable(
    qualname: str, backward: Callable, setup_context: Callable
) -> Callable[..., object]:
    """Registers ``backward`` / ``setup_context`` as the op's autograd with torch.library, and
    returns how the op wrappers call the op: in plain eager mode through an
    ``autograd.Function`` with the same two formulas, which runs the op below autograd; under
    torch.compile, tracing, tensor subclasses and torch.func, the op itself (its registered
    autograd).

    Why the twin: torch.library's generic autograd kernel re-fills the schema's defaults and
    redispatches from Python on every call, about 60 us on this machine's CPU, several times a
    small cross-entropy's kernel. Both paths run the same formulas on the same ctx attributes;
    opcheck and the compile tests exercise the registered one, the rest of the suite this one."""
    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    namespace, name = qualname.split("::")
    name, _, overload = name.partition(".")
    op = getattr(getattr(getattr(torch.ops, namespace), name), overload or "default")

    class EagerAutograd(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            with torch._C._AutoDispatchBelowAutograd():
                output = op(*args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    def call(*args):
        plain, requires_grad = _plain_eager_call(args)
        if not plain:
            return op(*args)
        if requires_grad and torch.is_grad_enabled():
            return EagerAutograd.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():  # nothing to record: skip autograd's kernel
            return op(*args)

    return call
