"""Post-hoc calibration of classifier logits (Guo et al., 2017, "On Calibration of Modern Neural
Networks"): temperature and vector scaling fitted on held-out data, calibration errors (ECE, MCE,
RMS) and reliability diagrams.

Inputs follow one convention throughout:

- multi-class: logits of shape (N, C) with C >= 2 and integer labels of shape (N,) in [0, C);
- binary: one logit per sample, shape (N,), and labels of shape (N,) in {0, 1} (integer, bool or
  floating 0.0 / 1.0); the probability of the positive class is ``sigmoid(logit)``.

Scalers (modules fitted with ``.fit(logits, labels)`` on held-out data, then applied
as ``scaler(logits)``):

- :class:`TemperatureScaler`: ``logits / T``, one ``T > 0``; binary when the logits are 1-D;
- :class:`VectorScaler`: ``logits * scale + bias`` per class (``scale > 0``); with
  ``num_classes=1`` it takes binary logits (Platt scaling).

Binning: ``n_bins`` equal-width bins over the top-1 confidence, closed on the right,
``(k / n_bins, (k + 1) / n_bins]``; the first bin also holds a confidence of exactly 0, so a
confidence of exactly 0 lands in the first bin and exactly 1 in the last.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from . import functional as lf
from ._validation import check_floating
from .ops._common import accumulation_dtype

__all__ = [
    "TemperatureScaler",
    "VectorScaler",
    "calibration_error",
    "reliability_diagram",
]

_NORMS = ("l1", "max", "l2")


# --------------------------------------------------------------------------------------------
# Input checks shared by the scalers and the metrics


def _check_inputs(logits: Tensor, labels: Tensor, *, what: str = "logits") -> tuple[bool, int]:
    """Validates a (logits, labels) pair; returns (binary, num_classes), num_classes 1 if binary."""
    check_floating(what, logits)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if logits.dim() == 1:
        binary, num_classes = True, 1
    elif logits.dim() == 2:
        binary, num_classes = False, logits.shape[1]
        if num_classes < 2:
            raise ValueError(
                f"{what} of shape (N, C) needs C >= 2 classes, got shape {tuple(logits.shape)}; "
                "pass binary inputs as shape (N,)"
            )
    else:
        raise ValueError(
            f"{what} must have shape (N, C) (multi-class) or (N,) (binary), got shape "
            f"{tuple(logits.shape)}"
        )
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) to match {what} of shape "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    if labels.device != logits.device:
        raise ValueError(
            f"labels are on {labels.device} but {what} are on {logits.device}; "
            "move them to the same device"
        )
    if logits.shape[0] == 0:
        raise ValueError(f"{what} must hold at least one sample, got shape {tuple(logits.shape)}")
    if labels.is_complex():
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    if binary:
        # 0 / 1 as integers, bools or floats (BCE targets are often float).
        if labels.dtype != torch.bool and not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("labels of binary inputs (shape (N,)) must be 0 or 1")
    else:
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(
                f"labels must be an integer tensor of class indices, got {labels.dtype}"
            )
        if bool(((labels < 0) | (labels >= num_classes)).any()):
            raise ValueError(
                f"labels must be class indices in [0, {num_classes}), got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
    return binary, num_classes


# --------------------------------------------------------------------------------------------
# Scalers


class _LogitScaler(torch.nn.Module):
    """Shared fitting loop: parameters in an unconstrained form, NLL minimized with LBFGS.
    Subclasses define ``_transform(logits, *params)``, the scaled logits."""

    def _check_num_classes(self, binary: bool, num_classes: int) -> None:
        pass

    def forward(self, logits: Tensor) -> Tensor:
        check_floating("logits", logits)
        acc = accumulation_dtype(logits.dtype)
        params = [p.to(device=logits.device, dtype=acc) for p in self.parameters()]
        return self._transform(logits.to(acc), *params).to(logits.dtype)

    def fit(self, logits: Tensor, labels: Tensor, *, max_iter: int = 50, lr: float = 0.01):
        """Fits the parameters by minimizing the mean negative log-likelihood of ``labels``
        under the scaled ``logits`` (held-out data, not the training set), with
        :class:`torch.optim.LBFGS` (strong-Wolfe line search).

        The inputs are detached (no gradient reaches the model that produced them) and the
        loss is computed in float64 on a private copy of them (float32 round-off in the mean NLL
        of thousands of samples stalls LBFGS's line search short of the optimum). The fit runs
        with gradients enabled whatever the caller's grad / inference mode, restores that mode
        afterwards, and leaves the module's ``training`` flag and its parameters' ``.grad``
        untouched: the optimizer works on private copies of the parameters, written back into
        them at the end.

        Parameters
        ----------
        logits : Tensor
            (N, C) multi-class logits, or (N,) binary logits.
        labels : Tensor
            (N,) class indices in [0, C), or 0 / 1 for binary logits.
        max_iter : int
            At most this many LBFGS iterations (and ``4 * max_iter`` loss evaluations).
        lr : float
            LBFGS's initial step length; the line search extrapolates from it. ``lr=1.0`` (the
            quasi-Newton step) usually converges in fewer loss evaluations.

        Returns
        -------
        self

        Examples
        --------
        >>> import torch
        >>> import logitops
        >>> from logitops.calibration import TemperatureScaler
        >>> logits, labels = 3 * torch.randn(1000), torch.randint(0, 2, (1000,))  # binary
        >>> scaler = TemperatureScaler().fit(logits, labels, lr=1.0)
        >>> scaler.log_temperature.grad is None and not logits.requires_grad
        True
        """
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        binary, num_classes = _check_inputs(logits, labels)
        self._check_num_classes(binary, num_classes)
        if not bool(torch.isfinite(logits).all()):
            raise ValueError("logits must be finite to fit a scaler (found NaN or inf)")

        work = torch.float64
        with torch.inference_mode(False), torch.enable_grad():
            # clone(): inference-mode tensors cannot take part in autograd; the copy is also
            # what makes the fit independent of later in-place changes by the caller.
            z = logits.detach().to(work, copy=True)
            y = labels.detach().to(work if binary else torch.int64, copy=True)
            own = list(self.parameters())
            params = [
                p.detach().to(device=z.device, dtype=work, copy=True).requires_grad_() for p in own
            ]
            optimizer = torch.optim.LBFGS(
                params,
                lr=lr,
                max_iter=max_iter,
                max_eval=4 * max_iter,
                line_search_fn="strong_wolfe",
            )

            def closure() -> Tensor:
                optimizer.zero_grad()
                loss = _nll(self._transform(z, *params), y, binary)
                loss.backward()
                return loss

            optimizer.step(closure)
            if not all(bool(torch.isfinite(p).all()) for p in params):
                raise RuntimeError(
                    f"{type(self).__name__}.fit diverged (non-finite parameters); the module "
                    "was left unchanged"
                )
        # Written back in the caller's mode: a scaler created under inference_mode holds
        # inference tensors, which may only be updated in place inside inference mode.
        with torch.no_grad():
            for p, fitted in zip(own, params, strict=True):
                p.copy_(fitted)
        return self


def _nll(scaled: Tensor, labels: Tensor, binary: bool) -> Tensor:
    if binary:
        return lf.binary_cross_entropy_with_logits(scaled, labels)
    return lf.cross_entropy(scaled, labels)


class TemperatureScaler(_LogitScaler):
    """Temperature scaling: ``logits / T`` with one temperature ``T > 0`` fitted on held-out
    data (Guo et al., 2017). Dividing by ``T > 0`` never changes the arg-max, so accuracy is
    unchanged; only the confidences move.

    ``T`` is stored as its logarithm (parameter ``log_temperature``), so it stays positive
    whatever the optimizer does. Works for multi-class logits (N, C) and, automatically, for
    binary logits of shape (N,) (the NLL is then the binary cross-entropy of
    ``sigmoid(logit / T)``). :meth:`forward` accepts logits of any shape.

    Parameters
    ----------
    init_temperature : float
        Starting value of ``T`` (> 0).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import TemperatureScaler
    >>> val_logits, val_labels = 3 * torch.randn(500, 10), torch.randint(0, 10, (500,))
    >>> scaler = TemperatureScaler().fit(val_logits, val_labels)
    >>> scaler.temperature > 1.0  # random labels: the logits are over-confident
    True
    >>> calibrated = scaler(torch.randn(4, 10))
    """

    def __init__(self, init_temperature: float = 1.0) -> None:
        super().__init__()
        if not (
            isinstance(init_temperature, (int, float))
            and math.isfinite(init_temperature)
            and init_temperature > 0
        ):
            raise ValueError(
                f"init_temperature must be a finite number > 0, got {init_temperature!r}"
            )
        self.log_temperature = torch.nn.Parameter(
            torch.tensor(math.log(init_temperature), dtype=torch.float32)
        )

    @property
    def temperature(self) -> float:
        """The fitted temperature ``T`` (a Python float, always > 0)."""
        return math.exp(float(self.log_temperature.detach()))

    def _transform(self, logits: Tensor, log_temperature: Tensor) -> Tensor:
        return logits * torch.exp(-log_temperature)

    def forward(self, logits: Tensor) -> Tensor:
        """``logits / T`` in the logits' dtype.

        Examples
        --------
        >>> with torch.no_grad():
        ...     TemperatureScaler(init_temperature=2.0)(torch.tensor([[2.0, -4.0]]))
        tensor([[ 1., -2.]])
        """
        return super().forward(logits)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4g}"


class VectorScaler(_LogitScaler):
    """Vector scaling: ``logits * scale + bias`` with a per-class ``scale > 0`` and ``bias``
    (Guo et al., 2017), fitted on held-out data by minimizing the NLL. More flexible than
    temperature scaling (2 C parameters instead of 1), so it can also change the arg-max and
    needs more validation data to avoid over-fitting.

    ``scale`` is stored as its logarithm (parameter ``log_scale``), so it stays positive. With
    ``num_classes=1`` the scaler takes binary logits of shape (N,) and is Platt scaling,
    ``sigmoid(a * logit + b)``. :meth:`forward` accepts logits of shape (..., C) (or (...,)
    when ``num_classes == 1``).

    Parameters
    ----------
    num_classes : int
        C, the number of classes (1 for binary logits of shape (N,)).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import VectorScaler
    >>> val_logits, val_labels = torch.randn(500, 3), torch.randint(0, 3, (500,))
    >>> scaler = VectorScaler(num_classes=3).fit(val_logits, val_labels)
    >>> scaler.scale.shape, scaler.bias.shape
    (torch.Size([3]), torch.Size([3]))
    >>> calibrated = scaler(torch.randn(4, 3))
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.log_scale = torch.nn.Parameter(torch.zeros(num_classes))
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))

    @property
    def scale(self) -> Tensor:
        """The per-class scale, ``exp(log_scale)`` (detached, always > 0)."""
        return self.log_scale.detach().exp()

    def _check_num_classes(self, binary: bool, num_classes: int) -> None:
        if num_classes != self.num_classes:
            got = "binary logits of shape (N,)" if binary else f"{num_classes} classes"
            raise ValueError(
                f"this VectorScaler has num_classes={self.num_classes} but the logits have {got}"
            )

    def _transform(self, logits: Tensor, log_scale: Tensor, bias: Tensor) -> Tensor:
        # With num_classes == 1 the (1,)-shaped parameters broadcast over binary logits (N,).
        return logits * log_scale.exp() + bias

    def forward(self, logits: Tensor) -> Tensor:
        """``logits * scale + bias`` in the logits' dtype, over the last dimension.

        Examples
        --------
        >>> with torch.no_grad():
        ...     VectorScaler(num_classes=2)(torch.tensor([[2.0, -4.0]]))
        tensor([[ 2., -4.]])
        """
        if self.num_classes > 1 and (logits.dim() == 0 or logits.shape[-1] != self.num_classes):
            raise ValueError(
                f"logits must have {self.num_classes} classes in the last dimension, got shape "
                f"{tuple(logits.shape)}"
            )
        return super().forward(logits)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


# --------------------------------------------------------------------------------------------
# Calibration error and reliability diagram


def _confidences(logits: Tensor, labels: Tensor, from_logits: bool) -> tuple[Tensor, Tensor]:
    """Top-1 confidence (float64) and whether the top-1 prediction is correct (bool)."""
    what = "logits" if from_logits else "logits (probabilities, from_logits=False)"
    binary, _ = _check_inputs(logits, labels, what=what)
    x = logits.detach().to(accumulation_dtype(logits.dtype))
    if bool(torch.isnan(x).any()):
        raise ValueError("logits must not contain NaN")
    if not from_logits and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("with from_logits=False, logits are probabilities and must lie in [0, 1]")
    if binary:
        p = torch.sigmoid(x) if from_logits else x
        p = p.double()
        confidence = torch.maximum(p, 1 - p)
        correct = (p >= 0.5) == labels.bool()
    else:
        probs = torch.softmax(x, dim=1) if from_logits else x
        top, prediction = probs.max(dim=1)
        confidence = top.double()
        correct = prediction == labels
    return confidence, correct


def _bin_indices(confidence: Tensor, n_bins: int) -> Tensor:
    """Bin k holds confidences in (k / n_bins, (k + 1) / n_bins]; 0 goes to bin 0 and 1 to bin
    n_bins - 1. The edges k / n_bins are correctly rounded float64 values, so a confidence equal
    to ``k / n_bins`` (as Python computes it) lands in bin k - 1."""
    edges = torch.arange(1, n_bins, dtype=torch.float64, device=confidence.device) / n_bins
    index = torch.bucketize(confidence.double(), edges, right=False)
    return index.clamp_(0, n_bins - 1)


def _bin_statistics(
    confidence: Tensor, correct: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per bin: sample count, sum of confidences, number correct (all float64)."""
    index = _bin_indices(confidence, n_bins)
    zeros = torch.zeros(n_bins, dtype=torch.float64, device=confidence.device)
    count = zeros.index_add(0, index, torch.ones_like(confidence))
    conf_sum = zeros.index_add(0, index, confidence)
    correct_sum = zeros.index_add(0, index, correct.double())
    return count, conf_sum, correct_sum


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")


def calibration_error(
    logits: Tensor,
    labels: Tensor,
    *,
    n_bins: int = 15,
    norm: str = "l1",
    from_logits: bool = True,
) -> Tensor:
    r"""Calibration error of top-1 predictions over ``n_bins`` equal-width confidence bins.

    With bin ``b`` holding ``n_b`` of the ``N`` samples, mean confidence ``conf_b`` and
    accuracy ``acc_b``:

    - ``norm="l1"``: expected calibration error, ECE ``= sum_b n_b / N * |acc_b - conf_b|``;
    - ``norm="max"``: maximum calibration error, MCE ``= max_b |acc_b - conf_b|`` over the
      non-empty bins;
    - ``norm="l2"``: RMS calibration error ``= sqrt(sum_b n_b / N * (acc_b - conf_b)**2)``.

    Bin ``k`` is ``(k / n_bins, (k + 1) / n_bins]``; a confidence of exactly 0 belongs to the
    first bin and exactly 1 to the last. Multi-class: confidence is the largest softmax
    probability and the prediction its class (the first on ties). Binary (shape (N,)): with
    ``p = sigmoid(logit)``, the prediction is ``p >= 0.5`` and the confidence
    ``max(p, 1 - p)``.

    Parameters
    ----------
    logits : Tensor
        (N, C) logits, or (N,) binary logits; float32 / float64 / bfloat16 / float16. With
        ``from_logits=False``: (N, C) class probabilities (rows should sum to 1; not checked),
        or (N,) probabilities of the positive class, all in [0, 1].
    labels : Tensor
        (N,) integer class indices in [0, C); for binary inputs 0 / 1 (integer, bool or float).
    n_bins : int
        Number of equal-width bins over [0, 1].
    norm : {"l1", "max", "l2"}
    from_logits : bool
        Whether ``logits`` are logits (softmax / sigmoid applied here) or probabilities.

    Returns
    -------
    Tensor
        0-dim, on the logits' device: float64 for float64 input, otherwise float32 (computed
        in float64 either way).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import calibration_error
    >>> logits = 4 * torch.randn(1000, 10)
    >>> labels = torch.randint(0, 10, (1000,))
    >>> ece = calibration_error(logits, labels)  # over-confident: large ECE
    >>> mce = calibration_error(logits, labels, norm="max")
    >>> bool(mce >= ece)
    True
    >>> calibration_error(torch.tensor([0.9, 0.2]), torch.tensor([1, 1]), from_logits=False)
    tensor(0.4500)
    """
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of 'l1', 'max', 'l2', got {norm!r}")
    _check_n_bins(n_bins)
    confidence, correct = _confidences(logits, labels, from_logits)
    count, conf_sum, correct_sum = _bin_statistics(confidence, correct, n_bins)
    total = confidence.numel()
    occupied = count > 0
    gap = (correct_sum[occupied] - conf_sum[occupied]).abs() / count[occupied]
    if norm == "l1":
        result = (gap * count[occupied]).sum() / total
    elif norm == "max":
        result = gap.max()
    else:
        result = ((gap * gap * count[occupied]).sum() / total).sqrt()
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return result.to(out_dtype)


def reliability_diagram(
    logits: Tensor,
    labels: Tensor,
    *,
    n_bins: int = 15,
    path: str | os.PathLike[str] | None = None,
    from_logits: bool = True,
    title: str | None = None,
):
    """Reliability diagram: per confidence bin, the accuracy (bars), the gap to the bin's mean
    confidence (hatched bars), the diagonal of perfect calibration, and the ECE in the title; a
    lower panel shows how many samples fall in each bin.

    Same inputs and binning as :func:`calibration_error`. Needs matplotlib (not a runtime
    dependency of logitops: ``pip install logitops[examples]``). The figure is a
    :class:`matplotlib.figure.Figure` made without pyplot, so no GUI backend is needed and
    nothing is kept in pyplot's figure registry; notebooks display it when it is returned.

    Parameters
    ----------
    logits, labels : Tensor
        As for :func:`calibration_error`.
    n_bins : int
        Number of equal-width bins.
    path : str or os.PathLike, optional
        When given, the figure is also saved there as PNG.
    from_logits : bool
        Whether ``logits`` are logits or probabilities.
    title : str, optional
        Prefix of the title (the ECE is always appended).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import reliability_diagram
    >>> logits, labels = 3 * torch.randn(2000, 10), torch.randint(0, 10, (2000,))
    >>> fig = reliability_diagram(logits, labels, path="reliability.png")  # doctest: +SKIP
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "reliability_diagram needs matplotlib, which logitops does not install by default; "
            "install it with `pip install logitops[examples]` (or `pip install matplotlib`)"
        ) from error
    _check_n_bins(n_bins)
    confidence, correct = _confidences(logits, labels, from_logits)
    count, conf_sum, correct_sum = _bin_statistics(confidence, correct, n_bins)
    total = confidence.numel()
    occupied = count > 0
    ece = float((correct_sum - conf_sum).abs().sum() / total)

    count_, conf_sum_, correct_sum_ = (t.cpu().tolist() for t in (count, conf_sum, correct_sum))
    width = 1.0 / n_bins
    centers = [(k + 0.5) * width for k in range(n_bins)]
    shown = [k for k in range(n_bins) if bool(occupied[k])]
    accuracy = [correct_sum_[k] / count_[k] for k in shown]
    mean_conf = [conf_sum_[k] / count_[k] for k in shown]
    x = [centers[k] for k in shown]

    fig = Figure(figsize=(5.0, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(x, accuracy, width=width, color="tab:blue", edgecolor="black", label="Accuracy")
    top.bar(
        x,
        [c - a for c, a in zip(mean_conf, accuracy, strict=True)],
        bottom=accuracy,
        width=width,
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        label="Gap to confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="Perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("Accuracy")
    top.legend(loc="upper left")
    heading = f"ECE = {100 * ece:.2f}% ({n_bins} bins, N = {total})"
    top.set_title(f"{title}\n{heading}" if title else heading)
    bottom.bar(centers, count_, width=width, color="gray", edgecolor="black")
    bottom.set_xlabel("Confidence")
    bottom.set_ylabel("Samples")
    if path is not None:
        fig.savefig(path, format="png", dpi=100)
    return fig
