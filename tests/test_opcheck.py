"""torch.library.opcheck of every registered op (schema, fake kernel, autograd registration, AOT
dispatch with dynamic shapes) on sample inputs, on every device.

SAMPLE_INPUTS maps each name of ``logitops.build_info()["ops"]`` (overloads included) to a function
``device -> [(kind, args)]``: odd shapes, optional tensors given and None, every mode, inputs
with and without requires_grad for the differentiable ops. An op registered without samples, or
samples for an op that is not registered, fails ``test_every_op_has_samples``. The arguments of each
op are built by one function (``*_args``) from keywords; the mode arguments are the schemas' names
(the distillation ops' mean is ``batchmean``: ``distillation_reduction_arg``).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import DEVICES

import logitops

REDUCTIONS = ("none", "mean", "sum")
KINDS = ("forward", "reverse", "jsd")
ORDERS = ("hf", "vllm", "joint")


# --- the schemas' mode arguments ------------------------------------------------------------


def distillation_reduction_arg(name: str) -> str:
    # The distillation ops' mean is the mean over the counted rows, kl_div's batchmean.
    return "batchmean" if name == "mean" else name


def op(name: str):
    """The OpOverload of a build_info() name ('base' or 'base.overload')."""
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.logitops, base), overload or "default")


def fused(device: str, requires_grad: bool) -> bool:
    """compute_grad as the functional layer passes it: a fused gradient on the CPU when needed."""
    return requires_grad and device == "cpu"


def kind(**parts) -> str:
    """A sample's name from what varies in it."""
    return ",".join(k if v is True else f"{k}={v}" for k, v in parts.items() if v is not False)


# --- one argument builder per op (keywords -> the schema's positional arguments) ---------------


def cross_entropy_forward_args(
    logits,
    target,
    *,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=0.0,
    reduction="mean",
    compute_grad=False,
):
    return (
        logits,
        target,
        weight,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        reduction,
        compute_grad,
    )


def cross_entropy_backward_args(
    grad_loss,
    grad_lse,
    logits,
    target,
    lse,
    total_weight,
    *,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=0.0,
    reduction="mean",
):
    return (
        grad_loss,
        grad_lse,
        logits,
        target,
        weight,
        lse,
        total_weight,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        reduction,
    )


def cross_entropy_probs_forward_args(
    logits,
    target,
    *,
    weight=None,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=0.0,
    reduction="mean",
    compute_grad=False,
):
    return (
        logits,
        target,
        weight,
        label_smoothing,
        z_loss,
        softcap,
        reduction,
        compute_grad,
    )


def cross_entropy_probs_backward_args(
    grad_loss,
    grad_lse,
    logits,
    target,
    lse,
    *,
    weight=None,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=0.0,
    reduction="mean",
):
    return (
        grad_loss,
        grad_lse,
        logits,
        target,
        weight,
        lse,
        label_smoothing,
        z_loss,
        softcap,
        reduction,
    )


def distillation_forward_args(
    student,
    teacher,
    *,
    target=None,
    ignore_index=-100,
    temperature=1.0,
    kind="forward",
    beta=0.5,
    hard_weight=0.0,
    soft_weight=1.0,
    reduction="mean",
    compute_grad=False,
):
    return (
        student,
        teacher,
        target,
        ignore_index,
        temperature,
        kind,
        beta,
        hard_weight,
        soft_weight,
        distillation_reduction_arg(reduction),
        compute_grad,
    )


def distillation_backward_args(
    grad_loss,
    student,
    teacher,
    row_count,
    *,
    target=None,
    ignore_index=-100,
    temperature=1.0,
    kind="forward",
    beta=0.5,
    hard_weight=0.0,
    soft_weight=1.0,
    reduction="mean",
):
    return (
        grad_loss,
        student,
        teacher,
        target,
        ignore_index,
        temperature,
        kind,
        beta,
        hard_weight,
        soft_weight,
        distillation_reduction_arg(reduction),
        row_count,
    )


def bce_forward_args(
    input, target, *, weight=None, pos_weight=None, reduction="mean", compute_grad=False
):
    return (input, target, weight, pos_weight, reduction, compute_grad)


def bce_backward_args(grad_loss, input, target, *, weight=None, pos_weight=None, reduction="mean"):
    return (grad_loss, input, target, weight, pos_weight, reduction)


def linear_cross_entropy_forward_args(
    input,
    linear_weight,
    target,
    *,
    linear_bias=None,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=0.0,
    reduction="mean",
    chunk_size=4,
    compute_grad=False,
):
    return (
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        reduction,
        chunk_size,
        compute_grad,
    )


def linear_cross_entropy_backward_args(
    grad_rows,
    input,
    linear_weight,
    target,
    lse,
    *,
    linear_bias=None,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=0.0,
    chunk_size=4,
):
    return (
        grad_rows,
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        lse,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        chunk_size,
    )


def vocab_parallel_stats_args(logits, target, *, vocab_start=0):
    return (logits, target, vocab_start)


def vocab_parallel_backward_args(
    grad_rows,
    logits,
    target,
    lse,
    *,
    vocab_start=0,
    num_classes,
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
):
    return (
        grad_rows,
        logits,
        target,
        lse,
        vocab_start,
        num_classes,
        ignore_index,
        label_smoothing,
        z_loss,
    )


def filter_logits_args(
    logits,
    temperature,
    top_k,
    top_p,
    min_p,
    *,
    logit_bias=None,
    order="hf",
    filter_value=-float("inf"),
    min_tokens_to_keep=1,
    penalties=(),
    warpers=(),
):
    return (
        logits,
        logit_bias,
        temperature,
        top_k,
        top_p,
        min_p,
        order,
        filter_value,
        min_tokens_to_keep,
        *(penalties or (((None,) * 5 + (False,)) if warpers else ())),
        *warpers,
    )


def sample_args(
    logits,
    temperature,
    top_k,
    top_p,
    min_p,
    seed,
    *,
    logit_bias=None,
    order="hf",
    per_row_seeds,
    penalties=(),
    warpers=(),
):
    return (
        logits,
        logit_bias,
        temperature,
        top_k,
        top_p,
        min_p,
        order,
        seed,
        per_row_seeds,
        *(penalties or (((None,) * 5 + (False,)) if warpers else ())),
        *warpers,
    )


def penalty_args(device, rows, vocab, history, *, output_only=False):
    """The ops' penalty arguments: per row, distinct ids (ascending; vocab = skipped) and their
    output counts (0: prompt only), and per-row penalties."""
    f64 = dict(device=device, dtype=torch.float64)
    ids = torch.stack(
        [torch.randperm(vocab, device=device)[:history].sort().values for _ in range(rows)]
    )
    if history > 0:
        ids[0, -1] = vocab
    counts = torch.randint(0, 3, (rows, history), device=device)
    return (
        ids,
        counts,
        torch.tensor([1.3, 0.7, 1.0], **f64)[:rows],
        torch.tensor([0.5, 0.0, -0.2], **f64)[:rows],
        torch.tensor([0.1, 0.4, 0.0], **f64)[:rows],
        output_only,
    )


def _warper_parameters(device):
    """typical_p, epsilon_cutoff, eta_cutoff per row (off in some rows, None for absent)."""
    f64 = dict(dtype=torch.float64, device=device)
    return (
        (torch.tensor([0.5, 1.0, 0.9], **f64), torch.tensor([1e-3, 0.0, 0.02], **f64), None),
        (None, None, torch.tensor([2e-3, 0.05, 0.0], **f64)),
        (
            torch.tensor([0.3, 0.95, 1.0], **f64),
            torch.tensor([0.0, 1e-3, 0.01], **f64),
            torch.tensor([1e-3, 0.0, 0.01], **f64),
        ),
    )


# --- samples --------------------------------------------------------------------------------


def _class_targets(rows, classes, device, ignore_index=-100):
    target = torch.randint(0, max(classes, 1), (rows,), device=device)
    if rows > 2:
        target[2] = ignore_index
    return target


def cross_entropy_forward_samples(device):
    for requires_grad in (False, True):
        logits = torch.randn(7, 33, device=device, requires_grad=requires_grad)
        target = _class_targets(7, 33, device)
        weight = torch.rand(33, device=device)
        for reduction, w, ls, cap in itertools.product(
            REDUCTIONS, (None, weight), (0.0, 0.1), (0.0, 5.0)
        ):
            options = dict(weight=w, label_smoothing=ls, softcap=cap, reduction=reduction)
            yield (
                kind(reduction=reduction, weight=w is not None, ls=ls, cap=cap, grad=requires_grad),
                cross_entropy_forward_args(
                    logits, target, compute_grad=fused(device, requires_grad), **options
                ),
            )
    # z-loss, another ignore_index, one class, a vector tail, one row, no rows, a row stride,
    # half precision and float64.
    for shape, dtype, extra in (
        ((9, 33), torch.float32, dict(z_loss=1e-3, label_smoothing=0.2)),
        ((6, 1), torch.float32, dict(label_smoothing=0.1)),
        ((5, 259), torch.float32, dict(softcap=3.0, z_loss=1e-2)),
        ((1, 17), torch.float32, {}),
        ((0, 17), torch.float32, {}),
        ((6, 40), torch.bfloat16, dict(label_smoothing=0.1, z_loss=1e-3)),
        ((6, 40), torch.float64, dict(softcap=2.0)),
    ):
        rows, classes = shape
        for requires_grad, reduction in itertools.product((False, True), REDUCTIONS):
            if rows == 0 and reduction == "mean":
                continue  # NaN, which opcheck's comparisons do not take as equal
            logits = torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad)
            yield (
                kind(
                    shape="x".join(map(str, shape)),
                    dtype=str(dtype).split(".")[1],
                    reduction=reduction,
                    **extra,
                    grad=requires_grad,
                ),
                cross_entropy_forward_args(
                    logits,
                    _class_targets(rows, classes, device),
                    reduction=reduction,
                    compute_grad=fused(device, requires_grad),
                    **extra,
                ),
            )
    wide = torch.randn(6, 48, device=device)[:, :40]  # rows 48 apart
    target = torch.tensor([3, -1, 7, 0, 39, -1], device=device)
    for requires_grad in (False, True):
        yield (
            kind(row_stride=48, ignore_index=-1, grad=requires_grad),
            cross_entropy_forward_args(
                wide.detach().requires_grad_(requires_grad),
                target,
                ignore_index=-1,
                compute_grad=fused(device, requires_grad),
            ),
        )


def cross_entropy_backward_samples(device):
    weight = torch.rand(33, device=device)
    for (rows, classes), reduction, w, options in itertools.product(
        ((7, 33), (4, 1), (3, 259)),
        REDUCTIONS,
        (None, weight),
        (dict(label_smoothing=0.1, z_loss=1e-3), dict(softcap=5.0)),
    ):
        if w is not None and classes != 33:
            continue
        logits = torch.randn(rows, classes, device=device)
        target = _class_targets(rows, classes, device)
        loss, lse, total, _ = op("cross_entropy_forward")(
            *cross_entropy_forward_args(logits, target, weight=w, reduction=reduction, **options)
        )
        for grad_lse in (None, torch.randn_like(lse)):
            yield (
                kind(
                    shape=f"{rows}x{classes}",
                    reduction=reduction,
                    weight=w is not None,
                    **options,
                    grad_lse=grad_lse is not None,
                ),
                cross_entropy_backward_args(
                    torch.randn_like(loss),
                    grad_lse,
                    logits,
                    target,
                    lse,
                    total,
                    weight=w,
                    reduction=reduction,
                    **options,
                ),
            )


def _probability_targets(rows, classes, device, dtype=torch.float32):
    return torch.softmax(torch.randn(rows, classes, device=device), -1).to(dtype)


def cross_entropy_probs_forward_samples(device):
    for requires_grad in (False, True):
        logits = torch.randn(6, 21, device=device, requires_grad=requires_grad)
        target = _probability_targets(6, 21, device)
        weight = torch.rand(21, device=device)
        for reduction, (w, cap) in itertools.product(REDUCTIONS, ((None, 0.0), (weight, 4.0))):
            yield (
                kind(reduction=reduction, weight=w is not None, cap=cap, grad=requires_grad),
                cross_entropy_probs_forward_args(
                    logits,
                    target,
                    weight=w,
                    label_smoothing=0.1,
                    z_loss=1e-3,
                    softcap=cap,
                    reduction=reduction,
                    compute_grad=fused(device, requires_grad),
                ),
            )
    for shape, dtype in (
        ((5, 1), torch.float32),
        ((3, 259), torch.float32),
        ((4, 40), torch.bfloat16),
    ):
        for requires_grad, reduction in itertools.product((False, True), REDUCTIONS):
            logits = torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad)
            yield (
                kind(
                    shape="x".join(map(str, shape)),
                    dtype=str(dtype).split(".")[1],
                    reduction=reduction,
                    grad=requires_grad,
                ),
                cross_entropy_probs_forward_args(
                    logits,
                    _probability_targets(*shape, device, dtype),
                    reduction=reduction,
                    compute_grad=fused(device, requires_grad),
                ),
            )


def cross_entropy_probs_backward_samples(device):
    logits = torch.randn(6, 21, device=device)
    target = _probability_targets(6, 21, device)
    weight = torch.rand(21, device=device)
    for reduction, (w, cap) in itertools.product(REDUCTIONS, ((None, 0.0), (weight, 4.0))):
        options = dict(weight=w, label_smoothing=0.1, z_loss=1e-3, softcap=cap)
        loss, lse, _ = op("cross_entropy_probs_forward")(
            *cross_entropy_probs_forward_args(logits, target, reduction=reduction, **options)
        )
        for grad_lse in (None, torch.randn_like(lse)):
            yield (
                kind(
                    reduction=reduction,
                    weight=w is not None,
                    cap=cap,
                    grad_lse=grad_lse is not None,
                ),
                cross_entropy_probs_backward_args(
                    torch.randn_like(loss),
                    grad_lse,
                    logits,
                    target,
                    lse,
                    reduction=reduction,
                    **options,
                ),
            )
    for rows, classes in ((5, 1), (3, 259)):
        logits = torch.randn(rows, classes, device=device)
        target = _probability_targets(rows, classes, device)
        for reduction in REDUCTIONS:
            loss, lse, _ = op("cross_entropy_probs_forward")(
                *cross_entropy_probs_forward_args(logits, target, reduction=reduction)
            )
            yield (
                kind(shape=f"{rows}x{classes}", reduction=reduction),
                cross_entropy_probs_backward_args(
                    torch.randn_like(loss), None, logits, target, lse, reduction=reduction
                ),
            )


def _distillation_cases(device):
    """(kind, reduction, target or None) for every kind and reduction."""
    target = torch.tensor([0, -100, 2, 3, 4], device=device)
    for k, reduction, with_target in itertools.product(KINDS, REDUCTIONS, (True, False)):
        yield k, reduction, target if with_target else None


def distillation_forward_samples(device):
    for requires_grad in (False, True):
        student = torch.randn(5, 17, device=device, requires_grad=requires_grad)
        teacher = torch.randn(5, 17, device=device)
        for k, reduction, target in _distillation_cases(device):
            yield (
                kind(kind=k, reduction=reduction, target=target is not None, grad=requires_grad),
                distillation_forward_args(
                    student,
                    teacher,
                    target=target,
                    temperature=2.0,
                    kind=k,
                    beta=0.4,
                    reduction=reduction,
                    compute_grad=fused(device, requires_grad),
                ),
            )
    for shape, dtype, k, beta in (
        ((4, 1), torch.float32, "jsd", 0.5),
        ((3, 259), torch.float32, "reverse", 0.5),
        ((0, 9), torch.float32, "forward", 0.5),  # no rows (summed: their mean is NaN)
        ((4, 40), torch.bfloat16, "jsd", 0.1),
        ((4, 40), torch.float64, "jsd", 0.9),
    ):
        for requires_grad in (False, True):
            student = torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad)
            yield (
                kind(
                    shape="x".join(map(str, shape)),
                    dtype=str(dtype).split(".")[1],
                    kind=k,
                    beta=beta,
                    grad=requires_grad,
                ),
                distillation_forward_args(
                    student,
                    torch.randn(shape, device=device, dtype=dtype),
                    kind=k,
                    beta=beta,
                    reduction="sum",
                    compute_grad=fused(device, requires_grad),
                ),
            )
    for requires_grad in (False, True):
        student = torch.randn(5, 17, device=device, requires_grad=requires_grad)
        teacher = torch.randn(5, 17, device=device)
        for name, options in _distillation_hard_cases(device):
            yield (
                f"{name}-grad{requires_grad}",
                distillation_forward_args(
                    student,
                    teacher,
                    compute_grad=fused(device, requires_grad),
                    **options,
                ),
            )


def _distillation_hard_cases(device):
    """(name, options) with the hard term on: with the divergence (T 1 and 2), alone (soft
    weight 0), every kind, ignored rows."""
    target = torch.tensor([0, -100, 2, 16, 4], device=device)
    for k, temperature, hard, soft, reduction in (
        ("forward", 2.0, 0.3, 2.8, "batchmean"),
        ("forward", 1.0, 0.5, 0.5, "sum"),
        ("reverse", 2.0, 0.7, 1.2, "none"),
        ("jsd", 1.5, 1.0, 0.0, "batchmean"),
    ):
        yield (
            kind(kind=k, hard=hard, soft=soft, T=temperature, reduction=reduction),
            dict(
                target=target,
                temperature=temperature,
                kind=k,
                beta=0.4,
                hard_weight=hard,
                soft_weight=soft,
                reduction=reduction,
            ),
        )


def distillation_backward_samples(device):
    student = torch.randn(5, 17, device=device)
    teacher = torch.randn(5, 17, device=device)
    for k, reduction, target in _distillation_cases(device):
        options = dict(target=target, temperature=2.0, kind=k, beta=0.4, reduction=reduction)
        loss, count, _ = op("distillation_forward")(
            *distillation_forward_args(student, teacher, **options)
        )
        yield (
            kind(kind=k, reduction=reduction, target=target is not None),
            distillation_backward_args(torch.randn_like(loss), student, teacher, count, **options),
        )
    for rows, classes in ((4, 1), (3, 259)):
        student, teacher = torch.randn(2, rows, classes, device=device)
        loss, count, _ = op("distillation_forward")(
            *distillation_forward_args(student, teacher, kind="jsd")
        )
        yield (
            kind(shape=f"{rows}x{classes}", kind="jsd"),
            distillation_backward_args(torch.randn_like(loss), student, teacher, count, kind="jsd"),
        )
    student = torch.randn(5, 17, device=device)
    teacher = torch.randn(5, 17, device=device)
    for name, options in _distillation_hard_cases(device):
        loss, count, _ = op("distillation_forward")(
            *distillation_forward_args(student, teacher, **options)
        )
        yield (
            name,
            distillation_backward_args(torch.randn_like(loss), student, teacher, count, **options),
        )


def _bce_weights(rows, cols, device):
    """None, or weight and pos_weight broadcast along rows (stride 0), as the functional passes."""
    yield None, None
    yield (
        torch.rand(cols, device=device).expand(rows, cols),
        torch.rand(cols, device=device).expand(rows, cols),
    )


def bce_forward_samples(device):
    for shape in ((6, 9), (3, 259), (1, 1)):
        for requires_grad in (False, True):
            x = torch.randn(shape, device=device, requires_grad=requires_grad)
            y = torch.rand(shape, device=device)
            for reduction, (w, pw) in itertools.product(REDUCTIONS, _bce_weights(*shape, device)):
                yield (
                    kind(
                        shape="x".join(map(str, shape)),
                        reduction=reduction,
                        weights=w is not None,
                        grad=requires_grad,
                    ),
                    bce_forward_args(
                        x,
                        y,
                        weight=w,
                        pos_weight=pw,
                        reduction=reduction,
                        compute_grad=fused(device, requires_grad) and reduction != "none",
                    ),
                )
    for requires_grad, reduction in itertools.product((False, True), REDUCTIONS):
        x = torch.randn(4, 40, device=device, dtype=torch.bfloat16, requires_grad=requires_grad)
        pos_weight = torch.full((4, 40), 2.0, device=device)  # full, not broadcast
        yield (
            kind(dtype="bfloat16", reduction=reduction, pos_weight=True, grad=requires_grad),
            bce_forward_args(
                x,
                torch.rand(4, 40, device=device, dtype=torch.bfloat16),
                pos_weight=pos_weight,
                reduction=reduction,
                compute_grad=fused(device, requires_grad) and reduction != "none",
            ),
        )


def bce_backward_samples(device):
    for shape in ((6, 9), (3, 259)):
        x = torch.randn(shape, device=device)
        y = torch.rand(shape, device=device)
        for reduction, (w, pw) in itertools.product(REDUCTIONS, _bce_weights(*shape, device)):
            grad_loss = torch.randn(shape if reduction == "none" else (), device=device)
            yield (
                kind(shape="x".join(map(str, shape)), reduction=reduction, weights=w is not None),
                bce_backward_args(grad_loss, x, y, weight=w, pos_weight=pw, reduction=reduction),
            )


def _linear_case(device, dtype, tokens, hidden, vocab, bias=True):
    x = torch.randn(tokens, hidden, device=device).to(dtype)
    w = (torch.randn(vocab, hidden, device=device) / 4).to(dtype)
    b = torch.randn(vocab, device=device).to(dtype) if bias else None
    t = torch.randint(0, vocab, (tokens,), device=device)
    t[::7] = -100
    return x, w, b, t


def _linear_forward_samples(device, dtype):
    class_weight = torch.rand(13, device=device) + 0.5
    for reduction, requires_grad in itertools.product(REDUCTIONS, (True, False)):
        x, w, b, t = _linear_case(device, dtype, 11, 16, 13)
        leaves = [v.requires_grad_(requires_grad) for v in (x, w, b)]
        yield (
            kind(reduction=reduction, grad=requires_grad),
            linear_cross_entropy_forward_args(
                *leaves[:2],
                t,
                linear_bias=leaves[2],
                weight=class_weight,
                label_smoothing=0.1,
                z_loss=1e-3,
                reduction=reduction,
                chunk_size=4,
                compute_grad=requires_grad and reduction != "none",
            ),
        )
    # No bias, one chunk for all tokens, soft-capping, one class, no tokens.
    for (tokens, hidden, vocab), bias, options in (
        ((9, 5, 13), False, dict(softcap=3.0, chunk_size=64)),
        ((6, 4, 1), True, dict(label_smoothing=0.2, chunk_size=1)),
        ((0, 4, 13), True, dict(reduction="sum")),  # a mean of no rows is NaN
    ):
        for requires_grad in (False, True):
            x, w, b, t = _linear_case(device, dtype, tokens, hidden, vocab, bias)
            leaves = [v if v is None else v.requires_grad_(requires_grad) for v in (x, w, b)]
            yield (
                kind(shape=f"{tokens}x{hidden}x{vocab}", bias=bias, **options, grad=requires_grad),
                linear_cross_entropy_forward_args(
                    *leaves[:2],
                    t,
                    linear_bias=leaves[2],
                    compute_grad=requires_grad,
                    **options,
                ),
            )


def _linear_backward_samples(device, dtype, forward):
    class_weight = torch.rand(13, device=device) + 0.5
    for (tokens, hidden, vocab), bias, options in (
        ((11, 16, 13), True, {}),
        ((11, 16, 13), True, dict(weight=class_weight, label_smoothing=0.1, z_loss=1e-3)),
        ((9, 5, 13), False, dict(softcap=3.0, chunk_size=64)),
        ((6, 4, 1), True, dict(chunk_size=1)),
    ):
        x, w, b, t = _linear_case(device, dtype, tokens, hidden, vocab, bias)
        _, lse, *_ = op(forward)(
            *linear_cross_entropy_forward_args(x, w, t, linear_bias=b, reduction="none", **options)
        )
        parts = {k: (v if k != "weight" else True) for k, v in options.items()}
        yield (
            kind(shape=f"{tokens}x{hidden}x{vocab}", bias=bias, **parts),
            linear_cross_entropy_backward_args(
                torch.rand(tokens, device=device), x, w, t, lse, linear_bias=b, **options
            ),
        )


def vocab_parallel_stats_samples(device):
    target = torch.tensor([0, 9, 3, -100, 12], device=device)
    for shape, dtype, start in (
        ((5, 7), torch.float32, 6),
        ((5, 7), torch.float32, 0),
        ((5, 259), torch.float32, 0),
        ((5, 0), torch.float32, 3),  # an empty slice
        ((5, 7), torch.bfloat16, 6),
        ((5, 7), torch.float64, 6),
    ):
        yield (
            kind(shape="x".join(map(str, shape)), dtype=str(dtype).split(".")[1], start=start),
            vocab_parallel_stats_args(
                torch.randn(shape, device=device, dtype=dtype), target, vocab_start=start
            ),
        )


def vocab_parallel_backward_samples(device):
    target = torch.tensor([0, 9, 3, -100, 12], device=device)
    for dtype, start, options in (
        (torch.float32, 6, dict(label_smoothing=0.1)),
        (torch.float32, 0, dict(z_loss=1e-3)),
        (torch.float32, 6, dict(ignore_index=3, label_smoothing=0.2, z_loss=1e-2)),
        (torch.bfloat16, 6, {}),
        (torch.float64, 6, dict(label_smoothing=0.1)),
    ):
        acc = torch.float64 if dtype == torch.float64 else torch.float32  # accumulation dtype
        yield (
            kind(dtype=str(dtype).split(".")[1], start=start, **options),
            vocab_parallel_backward_args(
                torch.rand(5, device=device, dtype=acc),
                torch.randn(5, 7, device=device, dtype=dtype),
                target,
                torch.logsumexp(torch.randn(5, 13, device=device, dtype=acc), 1),
                vocab_start=start,
                num_classes=13,
                **options,
            ),
        )


def _decoding_parameters(device, rows=3):
    """Per-row temperature / top_k / top_p / min_p as the functional layer passes them."""
    f64 = dict(dtype=torch.float64, device=device)
    return (
        torch.tensor([0.5, 1.0, 0.0], **f64)[:rows],
        torch.tensor([5, 40, 3], device=device)[:rows],
        torch.tensor([0.9, 1.0, 0.5], **f64)[:rows],
        torch.tensor([0.0, 0.1, 0.0], **f64)[:rows],
    )


def filter_logits_samples(device):
    logits = torch.randn(3, 40, device=device)
    temperature, top_k, top_p, min_p = _decoding_parameters(device)
    temperature = temperature.clamp_min(0.1)  # filtering has no greedy rows
    bias = torch.randn(1, 40, device=device)
    for order, b in itertools.product(ORDERS, ("shared", None, "per_row")):
        logit_bias = {"shared": bias, "per_row": torch.randn(3, 40, device=device)}.get(b)
        yield (
            kind(order=order, bias=b),
            filter_logits_args(
                logits,
                temperature,
                top_k,
                top_p,
                min_p,
                logit_bias=logit_bias,
                order=order,
                filter_value=-1e9,
            ),
        )
    for dtype, vocab, keep in (
        (torch.bfloat16, 40, 3),
        (torch.float64, 259, 1),
        (torch.float32, 1, 1),
    ):
        yield (
            kind(dtype=str(dtype).split(".")[1], vocab=vocab, min_tokens_to_keep=keep),
            filter_logits_args(
                torch.randn(3, vocab, device=device, dtype=dtype),
                temperature,
                top_k,
                top_p,
                min_p,
                min_tokens_to_keep=keep,
            ),
        )
    for dtype, vocab, history, output_only in (
        (torch.float32, 40, 6, False),
        (torch.bfloat16, 40, 0, False),
        (torch.float64, 7, 7, True),
    ):
        yield (
            kind(
                penalties=True, dtype=str(dtype).split(".")[1], history=history, output=output_only
            ),
            filter_logits_args(
                torch.randn(3, vocab, device=device, dtype=dtype),
                temperature,
                top_k,
                top_p,
                min_p,
                logit_bias=torch.randn(1, vocab, device=device, dtype=torch.float64)
                if dtype == torch.float64
                else None,
                penalties=penalty_args(device, 3, vocab, history, output_only=output_only),
            ),
        )
    for i, warpers in enumerate(_warper_parameters(device)):
        yield (
            kind(warpers=i, order=ORDERS[i % len(ORDERS)]),
            filter_logits_args(
                torch.randn(3, 97, device=device, dtype=(torch.float32, torch.bfloat16)[i % 2]),
                temperature,
                top_k,
                top_p,
                min_p,
                order=ORDERS[i % len(ORDERS)],
                min_tokens_to_keep=1 + i,
                warpers=warpers,
            ),
        )


def beam_search_step_samples(device):
    for dtype, beams, vocab, candidates in (
        (torch.float32, 2, 40, 4),
        (torch.float64, 3, 7, 6),
        (torch.bfloat16, 1, 33, 2),
        (torch.float16, 4, 1, 8),  # fewer candidates than num_candidates
    ):
        logits = torch.randn(2 * beams, vocab, device=device, dtype=dtype)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        beam_scores = torch.randn(2 * beams, device=device, dtype=acc)
        yield (
            kind(dtype=str(dtype).split(".")[1], beams=beams, vocab=vocab),
            (logits, beam_scores, beams, candidates),
        )


def sample_samples(device):
    logits = torch.randn(3, 40, device=device)
    parameters = _decoding_parameters(device)
    seed = torch.tensor([1, 2, 3], device=device)
    for order, per_row_seeds in itertools.product(ORDERS, (True, False)):
        yield (
            kind(order=order, per_row_seeds=per_row_seeds),
            sample_args(logits, *parameters, seed, order=order, per_row_seeds=per_row_seeds),
        )
    for dtype, vocab, bias in (
        (torch.bfloat16, 40, True),
        (torch.float64, 259, False),
        (torch.float32, 1, False),
    ):
        yield (
            kind(dtype=str(dtype).split(".")[1], vocab=vocab, bias=bias),
            sample_args(
                torch.randn(3, vocab, device=device, dtype=dtype),
                *parameters,
                seed,
                logit_bias=torch.randn(1, vocab, device=device) if bias else None,
                per_row_seeds=True,
            ),
        )
    for dtype, vocab, history, output_only in (
        (torch.float32, 40, 6, False),
        (torch.float16, 40, 0, True),
        (torch.float64, 7, 7, False),
    ):
        yield (
            kind(
                penalties=True, dtype=str(dtype).split(".")[1], history=history, output=output_only
            ),
            sample_args(
                torch.randn(3, vocab, device=device, dtype=dtype),
                *parameters,
                seed,
                per_row_seeds=True,
                penalties=penalty_args(device, 3, vocab, history, output_only=output_only),
            ),
        )
    for i, warpers in enumerate(_warper_parameters(device)):
        yield (
            kind(warpers=i, dtype=("float32", "float64")[i % 2]),
            sample_args(
                torch.randn(3, 97, device=device, dtype=(torch.float32, torch.float64)[i % 2]),
                *parameters,
                seed,
                per_row_seeds=bool(i % 2),
                warpers=warpers,
            ),
        )


def speculative_sample_samples(device):
    rows, drafts, vocab = 3, 2, 40
    ids = torch.randint(0, vocab, (rows, drafts), device=device)
    seed = torch.tensor([1, 2, 3], device=device)
    ones = torch.ones(rows, dtype=torch.float64, device=device)
    temperature = torch.tensor([0.7, 0.0, 1.0], dtype=torch.float64, device=device)
    for dtype, with_draft, per_row_seeds in (
        (torch.float32, True, True),
        (torch.bfloat16, False, False),
        (torch.float64, True, False),
    ):
        target = torch.randn(rows, drafts + 1, vocab, device=device).softmax(-1).to(dtype)
        draft = torch.randn(rows, drafts, vocab, device=device).softmax(-1).to(dtype)
        yield (
            kind(probs=str(dtype).split(".")[1], draft=with_draft, per_row_seeds=per_row_seeds),
            (target, draft if with_draft else None, ids, ones, False, seed, per_row_seeds),
        )
    for dtype, vocab_, with_draft in ((torch.float32, 40, True), (torch.float16, 7, False)):
        target = torch.randn(rows, drafts + 1, vocab_, device=device, dtype=dtype)
        draft = torch.randn(rows, drafts, vocab_, device=device, dtype=dtype)
        yield (
            kind(logits=str(dtype).split(".")[1], vocab=vocab_, draft=with_draft),
            (
                target,
                draft if with_draft else None,
                ids % vocab_,
                temperature,
                True,
                seed,
                True,
            ),
        )
    yield (
        "no_drafts",
        (
            torch.rand(rows, 1, 5, device=device),
            None,
            torch.empty(rows, 0, dtype=torch.int64, device=device),
            ones,
            False,
            seed,
            True,
        ),
    )


def scale_gradient_samples(device):
    for dtype, shape, scale in (
        (torch.float32, (3, 7), 2.5),
        (torch.bfloat16, (1, 33), 1.0),
        (torch.float64, (4, 1), -0.5),
        (torch.float32, (0, 5), 3.0),
        (torch.float16, (2, 3, 9), 0.0),
    ):
        yield (
            kind(dtype=str(dtype).split(".")[1], shape="x".join(map(str, shape)), scale=scale),
            (
                torch.randn(shape, device=device, dtype=dtype),
                torch.tensor(scale, device=device, dtype=torch.float32),
            ),
        )


def _overloads(base, make):
    """The samples of an op and its float32_logits overload (autocast: half-precision operands)."""
    return {
        base: lambda device: make(device, torch.float32, base),
        f"{base}.float32_logits": lambda device: make(
            device, torch.bfloat16, f"{base}.float32_logits"
        ),
    }


def calibration_row_stats_samples(device):
    # Odd class counts, a non-contiguous row stride, -inf logits and each dtype (no NaN output:
    # opcheck compares the outputs with ==).
    for shape, dtype, layout in (
        ((5, 7), torch.float32, "contiguous"),
        ((3, 1), torch.float32, "contiguous"),
        ((4, 259), torch.float32, "strided"),
        ((5, 7), torch.bfloat16, "contiguous"),
        ((5, 7), torch.float16, "contiguous"),
        ((5, 7), torch.float64, "masked"),
    ):
        rows, classes = shape
        logits = torch.randn(rows, classes * (2 if layout == "strided" else 1), dtype=dtype)
        logits = logits[:, :classes] if layout == "strided" else logits
        if layout == "masked":
            logits[0, 1:] = float("-inf")
        labels = torch.randint(0, classes, (rows,))
        yield (
            kind(shape="x".join(map(str, shape)), dtype=str(dtype).split(".")[1], layout=layout),
            (logits.to(device), labels.to(device)),
        )


# --- token log-probabilities -------------------------------------------------------------------


def _token_logprobs_cases(device):
    """(shape, dtype, temperature, target) with ignored rows, vocab 1 and odd sizes, no rows."""
    yield (5, 17), torch.float32, 1.0, torch.tensor([0, -100, 2, 16, 4], device=device)
    yield (4, 1), torch.float32, 0.7, torch.tensor([0, 0, -100, 0], device=device)
    yield (3, 259), torch.bfloat16, 1.3, torch.tensor([258, 7, -100], device=device)
    yield (3, 40), torch.float64, 0.5, torch.tensor([1, 2, 3], device=device)
    yield (0, 9), torch.float32, 1.0, torch.zeros(0, dtype=torch.long, device=device)


def token_logprobs_forward_samples(device):
    for shape, dtype, temperature, target in _token_logprobs_cases(device):
        for requires_grad, return_entropy in itertools.product((False, True), (False, True)):
            logits = torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad)
            yield (
                kind(
                    shape="x".join(map(str, shape)),
                    dtype=str(dtype).split(".")[1],
                    entropy=return_entropy,
                    grad=requires_grad,
                ),
                (logits, target, temperature, -100, return_entropy),
            )


def token_logprobs_backward_samples(device):
    for shape, dtype, temperature, target in _token_logprobs_cases(device):
        logits = torch.randn(shape, device=device, dtype=dtype)
        logprob, entropy, lse = op("token_logprobs_forward")(
            logits, target, temperature, -100, True
        )
        for upstream in ("logprob", "entropy", "both"):
            grad_logprob = torch.randn_like(logprob) if upstream != "entropy" else None
            grad_entropy = torch.randn_like(entropy) if upstream != "logprob" else None
            yield (
                kind(shape="x".join(map(str, shape)), dtype=str(dtype).split(".")[1], up=upstream),
                (grad_logprob, grad_entropy, logits, target, lse, entropy, temperature, -100),
            )


# --- probabilities and top log-probabilities ---------------------------------------------------


def _probs(rows, vocab, device, dtype=torch.float32):
    p = torch.rand(rows, vocab, device=device) ** 2
    return (p / p.sum(-1, keepdim=True)).to(dtype)


def softmax_samples(device):
    f64 = dict(dtype=torch.float64, device=device)
    for dtype, vocab in ((torch.float32, 40), (torch.bfloat16, 259), (torch.float64, 1)):
        yield (
            kind(dtype=str(dtype).split(".")[1], vocab=vocab),
            (
                torch.randn(3, vocab, device=device, dtype=dtype),
                torch.tensor([0.5, 1.0, 2.0], **f64),
            ),
        )


def probs_renorm_samples(device):
    _, top_k, top_p, min_p = _decoding_parameters(device)
    for order in ORDERS:
        yield kind(order=order), (_probs(3, 40, device), top_k, top_p, min_p, order)
    for dtype, vocab in ((torch.bfloat16, 40), (torch.float64, 259), (torch.float32, 1)):
        yield (
            kind(dtype=str(dtype).split(".")[1], vocab=vocab),
            (_probs(3, vocab, device, dtype), top_k, top_p, min_p, "hf"),
        )


def probs_sample_samples(device):
    _, top_k, top_p, min_p = _decoding_parameters(device)
    seed = torch.tensor([1, 2, 3], device=device)
    for order, per_row_seeds in itertools.product(ORDERS, (True, False)):
        yield (
            kind(order=order, per_row_seeds=per_row_seeds),
            (_probs(3, 40, device), top_k, top_p, min_p, order, seed, per_row_seeds),
        )
    for dtype, vocab in ((torch.bfloat16, 40), (torch.float64, 259), (torch.float32, 1)):
        yield (
            kind(dtype=str(dtype).split(".")[1], vocab=vocab),
            (_probs(3, vocab, device, dtype), top_k, top_p, min_p, "hf", seed, True),
        )


def top_logprobs_samples(device):
    f64 = dict(dtype=torch.float64, device=device)
    temperature = torch.tensor([0.5, 1.0, 2.0], **f64)
    token = torch.tensor([0, 5, 2], device=device)
    for dtype, vocab, n, with_token in (
        (torch.float32, 40, 5, True),
        (torch.float32, 7, 20, False),
        (torch.bfloat16, 259, 20, True),
        (torch.float64, 40, 0, True),
        (torch.float16, 1, 1, False),
    ):
        yield (
            kind(dtype=str(dtype).split(".")[1], vocab=vocab, n=n, token=with_token),
            (
                torch.randn(3, vocab, device=device, dtype=dtype),
                temperature,
                token.clamp_max(vocab - 1) if with_token else None,
                n,
            ),
        )


SAMPLE_INPUTS = {
    "bce_with_logits_backward": bce_backward_samples,
    "bce_with_logits_forward": bce_forward_samples,
    "beam_search_step": beam_search_step_samples,
    "calibration_row_stats": calibration_row_stats_samples,
    "cross_entropy_backward": cross_entropy_backward_samples,
    "cross_entropy_forward": cross_entropy_forward_samples,
    "cross_entropy_probs_backward": cross_entropy_probs_backward_samples,
    "cross_entropy_probs_forward": cross_entropy_probs_forward_samples,
    "distillation_backward": distillation_backward_samples,
    "distillation_forward": distillation_forward_samples,
    "filter_logits": filter_logits_samples,
    **_overloads(
        "linear_cross_entropy_forward",
        lambda device, dtype, _: _linear_forward_samples(device, dtype),
    ),
    **_overloads(
        "linear_cross_entropy_backward",
        lambda device, dtype, name: _linear_backward_samples(
            device, dtype, name.replace("backward", "forward")
        ),
    ),
    "probs_renorm": probs_renorm_samples,
    "probs_sample": probs_sample_samples,
    "sample": sample_samples,
    "scale_gradient_": scale_gradient_samples,
    "softmax": softmax_samples,
    "speculative_sample": speculative_sample_samples,
    "token_logprobs_backward": token_logprobs_backward_samples,
    "token_logprobs_forward": token_logprobs_forward_samples,
    "top_logprobs": top_logprobs_samples,
    "vocab_parallel_cross_entropy_backward": vocab_parallel_backward_samples,
    "vocab_parallel_cross_entropy_stats": vocab_parallel_stats_samples,
}


def _sample_kinds() -> list[tuple[str, str]]:
    kinds = []
    for name, samples in SAMPLE_INPUTS.items():
        names = [k for k, _ in samples("cpu")]
        assert len(names) == len(set(names)), f"{name}: two samples of one kind"
        kinds += [(name, k) for k in names]
    return kinds


SAMPLE_KINDS = _sample_kinds()


def test_every_op_has_samples():
    registered = set(logitops.build_info()["ops"])
    assert not registered - set(SAMPLE_INPUTS), "ops without opcheck samples"
    assert not set(SAMPLE_INPUTS) - registered, "samples for ops that are not registered"
    counts = {name: sum(n == name for n, _ in SAMPLE_KINDS) for name in SAMPLE_INPUTS}
    assert min(counts.values()) >= 3, counts


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,sample", SAMPLE_KINDS, ids=[f"{n}[{k}]" for n, k in SAMPLE_KINDS])
def test_opcheck(device, name, sample):
    args = dict(SAMPLE_INPUTS[name](device))[sample]
    torch.library.opcheck(op(name), args)


def _mode_arguments() -> list[tuple[str, int, str]]:
    """(op, position, argument name) of every `str` argument of every op's schema."""
    found = []
    for name in SAMPLE_INPUTS:
        for position, argument in enumerate(op(name)._schema.arguments):
            if str(argument.type) == "str":
                found.append((name, position, argument.name))
    return found


MODE_ARGUMENTS = _mode_arguments()


def test_mode_arguments_are_the_names_of_csrc_common_modes_h():
    assert {argument for _, _, argument in MODE_ARGUMENTS} == {"reduction", "kind", "order"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name,position,argument", MODE_ARGUMENTS, ids=[f"{n}.{a}" for n, _, a in MODE_ARGUMENTS]
)
def test_unknown_mode_name_is_a_value_error_naming_the_argument(device, name, position, argument):
    _, args = next(iter(SAMPLE_INPUTS[name](device)))
    bad = list(args)
    bad[position] = "Mean"  # names are exact, lower-case
    with pytest.raises(ValueError, match=rf"^{argument} must be '"):
        op(name)(*bad)
