"""Post-hoc calibration of classifier logits: calibrators fitted on held-out data, calibration
metrics (as functions of one batch and as stateful, distributed metrics) and figures.

Inputs follow one convention throughout:

- multi-class: logits of shape (N, C) with C >= 2 and integer labels of shape (N,) in [0, C);
- binary: one logit per sample, shape (N,), and labels of shape (N,) in {0, 1} (integer, bool or
  floating 0.0 / 1.0); the probability of the positive class is ``sigmoid(logit)``.

Calibrators (modules fitted with ``.fit(logits, labels)`` on held-out data, then applied as
``calibrator(logits)``):

- :class:`TemperatureScaler`: ``logits / T``, one ``T > 0`` (Guo et al. 2017); binary when the
  logits are 1-D;
- :class:`VectorScaler`: ``logits * scale + bias`` per class (``scale > 0``);
- :class:`MatrixScaler`: ``logits @ W.T + b`` and :class:`DirichletCalibrator`:
  ``log_softmax(logits) @ W.T + b`` (Kull et al. 2019), both with the off-diagonal and intercept
  regularization (ODIR);
- binary logits (N,): :class:`PlattScaler` (``a * logit + b``), :class:`HistogramBinning` and
  :class:`IsotonicRegression` (these two return probabilities).

Metrics: :func:`calibration_error` (ECE / MCE / RMS, equal-width or equal-mass bins, top-label
or classwise), :func:`adaptive_calibration_error` (ACE), :func:`brier_score` (with its
decomposition), :func:`negative_log_likelihood` and :func:`calibration_curve`; the stateful
:class:`CalibrationError`, :class:`AdaptiveCalibrationError`, :class:`BrierScore` and
:class:`NegativeLogLikelihood` take batches with ``update`` and sum their states across ranks in
``compute``. Multi-class logits are read once per metric by the fused ``calibration_row_stats``
op (top-1 confidence, prediction, NLL and Brier score per row, CPU and CUDA kernels).

Binning: ``n_bins`` equal-width bins over the top-1 confidence, closed on the right,
``(k / n_bins, (k + 1) / n_bins]``; the first bin also holds a confidence of exactly 0, so a
confidence of exactly 0 lands in the first bin and exactly 1 in the last. Equal-mass
("adaptive") bins cut the samples sorted by confidence into runs of equal size.
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from . import functional as lf
from ._validation import check_floating
from .ops import calibration as ops_calibration
from .ops._common import accumulation_dtype

__all__ = [
    "AdaptiveCalibrationError",
    "BrierDecomposition",
    "BrierScore",
    "CalibrationError",
    "DirichletCalibrator",
    "HistogramBinning",
    "IsotonicRegression",
    "MatrixScaler",
    "NegativeLogLikelihood",
    "PlattScaler",
    "TemperatureScaler",
    "VectorScaler",
    "adaptive_calibration_error",
    "brier_score",
    "calibration_curve",
    "calibration_error",
    "confidence_histogram",
    "negative_log_likelihood",
    "reliability_diagram",
]

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

    def _penalty(self, *params: Tensor) -> Tensor | None:
        """A regularization term added to the mean NLL (None: none)."""
        return None

    def _targets(self, labels: Tensor) -> Tensor:
        """The targets the NLL is taken of (binary: float labels)."""
        return labels

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
            if binary:
                y = self._targets(y)
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
                penalty = self._penalty(*params)
                if penalty is not None:
                    loss = loss + penalty
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


def _check_l2(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value >= 0)
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _odir_penalty(weight: Tensor, bias: Tensor, off_diagonal_l2: float, intercept_l2: float):
    """Kull et al. 2019's ODIR: off_diagonal_l2 / (C (C - 1)) * sum_{i != j} w_ij^2 +
    intercept_l2 / C * sum_j b_j^2."""
    c = weight.shape[0]
    off = weight - torch.diag_embed(torch.diagonal(weight))
    return (
        off_diagonal_l2 / (c * (c - 1)) * (off * off).sum() + intercept_l2 / c * (bias * bias).sum()
    )


class _MatrixCalibrator(_LogitScaler):
    """A full linear map of C inputs to C calibrated logits, ``inputs @ weight.T + bias``, from
    the identity, with the ODIR regularization of Kull et al. 2019 added to the mean NLL."""

    def __init__(self, num_classes: int, off_diagonal_l2: float, intercept_l2: float) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.off_diagonal_l2 = _check_l2("off_diagonal_l2", off_diagonal_l2)
        self.intercept_l2 = _check_l2("intercept_l2", intercept_l2)
        self.weight = torch.nn.Parameter(torch.eye(num_classes))
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))

    def _check_num_classes(self, binary: bool, num_classes: int) -> None:
        if binary or num_classes != self.num_classes:
            got = "binary logits of shape (N,)" if binary else f"{num_classes} classes"
            raise ValueError(
                f"this {type(self).__name__} has num_classes={self.num_classes} but the logits "
                f"have {got}"
            )

    def _inputs(self, logits: Tensor) -> Tensor:
        return logits

    def _transform(self, logits: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return self._inputs(logits) @ weight.T + bias

    def _penalty(self, weight: Tensor, bias: Tensor) -> Tensor | None:
        if self.off_diagonal_l2 == 0 and self.intercept_l2 == 0:
            return None
        return _odir_penalty(weight, bias, self.off_diagonal_l2, self.intercept_l2)

    def forward(self, logits: Tensor) -> Tensor:
        if logits.dim() == 0 or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"logits must have {self.num_classes} classes in the last dimension, got shape "
                f"{tuple(logits.shape)}"
            )
        return super().forward(logits)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, off_diagonal_l2={self.off_diagonal_l2}, "
            f"intercept_l2={self.intercept_l2}"
        )


class MatrixScaler(_MatrixCalibrator):
    """Matrix scaling (Guo et al., 2017): ``logits @ weight.T + bias`` with a full C x C
    ``weight`` and a bias, fitted on held-out data by minimizing the NLL, optionally with the
    off-diagonal and intercept regularization (ODIR) of Kull et al. 2019,
    ``off_diagonal_l2 / (C (C - 1)) * sum_{i != j} w_ij^2 + intercept_l2 / C * sum_j b_j^2``.
    C^2 + C parameters: for a few to a few hundred classes (over-fits without ODIR on small
    validation sets). Starts from the identity (the logits unchanged).

    Parameters
    ----------
    num_classes : int
        C >= 2.
    off_diagonal_l2 : float
        Weight of the penalty on the off-diagonal entries of ``weight``.
    intercept_l2 : float
        Weight of the penalty on ``bias``.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import MatrixScaler
    >>> logits, labels = 3 * torch.randn(600, 4), torch.randint(0, 4, (600,))
    >>> scaler = MatrixScaler(4, off_diagonal_l2=1e-2, intercept_l2=1e-2).fit(logits, labels)
    >>> scaler.weight.shape, scaler(logits).shape
    (torch.Size([4, 4]), torch.Size([600, 4]))
    """

    def __init__(
        self, num_classes: int, *, off_diagonal_l2: float = 0.0, intercept_l2: float = 0.0
    ) -> None:
        super().__init__(num_classes, off_diagonal_l2, intercept_l2)


class DirichletCalibrator(_MatrixCalibrator):
    """Dirichlet calibration (Kull et al., 2019, "Beyond temperature scaling"): calibrated
    logits ``log_softmax(logits) @ weight.T + bias``, a linear map of the log-probabilities,
    fitted by minimizing the NLL plus the ODIR regularization
    ``off_diagonal_l2 / (C (C - 1)) * sum_{i != j} w_ij^2 + intercept_l2 / C * sum_j b_j^2``
    (the paper's recommended variant; both 0 gives the unregularized fit). Starts from the
    identity, which leaves the probabilities unchanged. C^2 + C parameters.

    Parameters
    ----------
    num_classes : int
        C >= 2.
    off_diagonal_l2 : float
        lambda of ODIR, on the off-diagonal entries of ``weight``.
    intercept_l2 : float
        mu of ODIR, on ``bias``.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import DirichletCalibrator
    >>> logits, labels = 3 * torch.randn(600, 4), torch.randint(0, 4, (600,))
    >>> calibrator = DirichletCalibrator(4, off_diagonal_l2=1e-2, intercept_l2=1e-2)
    >>> calibrated = calibrator.fit(logits, labels)(logits)
    >>> calibrated.shape
    torch.Size([600, 4])
    """

    def __init__(
        self, num_classes: int, *, off_diagonal_l2: float = 0.0, intercept_l2: float = 0.0
    ) -> None:
        super().__init__(num_classes, off_diagonal_l2, intercept_l2)

    def _inputs(self, logits: Tensor) -> Tensor:
        return torch.log_softmax(logits, dim=-1)


class PlattScaler(_LogitScaler):
    """Platt scaling (Platt, 1999) of binary logits of shape (N,): ``a * logit + b``, so
    ``P(label 1) = sigmoid(a * logit + b)``, with ``a`` and ``b`` unconstrained (a negative
    ``a`` reverses the ranking; :class:`VectorScaler` with ``num_classes=1`` keeps ``a > 0``),
    fitted by maximum likelihood. ``smooth_targets=True`` fits Platt's regularized targets
    ``(N+ + 1) / (N+ + 2)`` for positives and ``1 / (N- + 2)`` for negatives instead of 1 and 0
    (as scikit-learn's sigmoid calibration does).

    Parameters
    ----------
    smooth_targets : bool
        Whether to fit Platt's smoothed targets.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import PlattScaler
    >>> z = 2 * torch.randn(2000)
    >>> labels = torch.bernoulli(torch.sigmoid(0.5 * z - 1.0))
    >>> scaler = PlattScaler().fit(z, labels)
    >>> round(scaler.a.item(), 1), round(scaler.b.item(), 1)  # doctest: +SKIP
    (0.5, -1.0)
    >>> probabilities = torch.sigmoid(scaler(z))
    """

    def __init__(self, smooth_targets: bool = False) -> None:
        super().__init__()
        if not isinstance(smooth_targets, bool):
            raise TypeError(f"smooth_targets must be a bool, got {type(smooth_targets).__name__}")
        self.smooth_targets = smooth_targets
        self.a = torch.nn.Parameter(torch.ones(()))
        self.b = torch.nn.Parameter(torch.zeros(()))

    def _check_num_classes(self, binary: bool, num_classes: int) -> None:
        if not binary:
            raise ValueError(
                f"PlattScaler takes binary logits of shape (N,), got {num_classes} classes"
            )

    def _targets(self, labels: Tensor) -> Tensor:
        if not self.smooth_targets:
            return labels
        positives = labels.sum()
        negatives = labels.numel() - positives
        return torch.where(labels > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def _transform(self, logits: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return logits * a + b

    def extra_repr(self) -> str:
        return f"a={float(self.a.detach()):.4g}, b={float(self.b.detach()):.4g}"


def _check_binary_fit(logits: Tensor, labels: Tensor, name: str, from_logits: bool):
    binary, num_classes = _check_inputs(logits, labels)
    if not binary:
        raise ValueError(f"{name} takes binary logits of shape (N,), got {num_classes} classes")
    return _binary_probabilities(logits.detach(), labels, from_logits)


def _check_binary_input(logits: Tensor, name: str, from_logits: bool) -> Tensor:
    check_floating("logits", logits)
    if logits.dim() != 1:
        raise ValueError(f"{name} takes binary logits of shape (N,), got {tuple(logits.shape)}")
    x = logits.detach().to(accumulation_dtype(logits.dtype))
    if bool(torch.isnan(x).any()):
        raise ValueError("logits must not contain NaN")
    return torch.sigmoid(x).double() if from_logits else _checked_probabilities(x).double()


class HistogramBinning(torch.nn.Module):
    """Histogram binning (Zadrozny & Elkan, 2001) of binary logits of shape (N,): the
    probabilities ``p = sigmoid(logit)`` of the held-out data are cut into ``n_bins`` bins
    (equal-width, or equal-mass with ``binning="adaptive"``: edges halfway between the
    neighbouring samples of two bins), and a probability is calibrated to the frequency of
    label 1 among the held-out samples of its bin. A bin that held no sample leaves its
    probabilities unchanged. :meth:`forward` returns probabilities, not logits.

    Parameters
    ----------
    n_bins : int
        Number of bins.
    binning : {"uniform", "adaptive"}
    from_logits : bool
        Whether inputs (to fit and forward) are logits or probabilities of label 1.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import HistogramBinning
    >>> z = 3 * torch.randn(1000)
    >>> labels = torch.bernoulli(torch.sigmoid(z / 3))
    >>> calibrator = HistogramBinning(n_bins=10).fit(z, labels)
    >>> probabilities = calibrator(z)
    >>> bool(((probabilities >= 0) & (probabilities <= 1)).all())
    True
    """

    def __init__(self, n_bins: int = 15, binning: str = "uniform", *, from_logits: bool = True):
        super().__init__()
        _check_n_bins(n_bins)
        _check_choice("binning", binning, _BINNINGS)
        self.n_bins, self.binning, self.from_logits = n_bins, binning, from_logits
        edges = torch.arange(1, n_bins, dtype=torch.float64) / n_bins
        self.register_buffer("edges", edges)
        self.register_buffer("frequency", torch.full((n_bins,), float("nan"), dtype=torch.float64))

    def fit(self, logits: Tensor, labels: Tensor):
        """Fits the bins' frequencies on held-out ``logits`` (N,) and 0 / 1 ``labels`` (N,).

        Parameters
        ----------
        logits : Tensor
            (N,) binary logits (probabilities with ``from_logits=False``).
        labels : Tensor
            (N,) labels 0 / 1 (integer, bool or float).

        Returns
        -------
        self

        Examples
        --------
        >>> import torch
        >>> import logitops
        >>> from logitops.calibration import HistogramBinning
        >>> p = torch.tensor([0.1, 0.2, 0.7, 0.9], dtype=torch.float64)
        >>> HistogramBinning(2, from_logits=False).fit(p, torch.tensor([0, 1, 1, 1])).frequency
        tensor([0.5000, 1.0000], dtype=torch.float64)
        """
        p, y = _check_binary_fit(logits, labels, "HistogramBinning", self.from_logits)
        if self.binning == "uniform":
            edges = torch.arange(1, self.n_bins, dtype=torch.float64, device=p.device) / self.n_bins
        else:
            ordered = torch.sort(p).values
            cut = (torch.arange(1, self.n_bins, device=p.device) * p.numel()) // self.n_bins
            lower = ordered[(cut - 1).clamp(min=0)]
            upper = ordered[cut.clamp(max=p.numel() - 1)]
            edges = (lower + upper) / 2
        index = torch.bucketize(p, edges, right=False)
        count = torch.zeros(self.n_bins, dtype=torch.float64, device=p.device).index_add_(
            0, index, torch.ones_like(p)
        )
        positives = torch.zeros_like(count).index_add_(0, index, y)
        frequency = torch.where(count > 0, positives / count.clamp(min=1), float("nan"))
        with torch.no_grad():
            self.edges = edges
            self.frequency = frequency
        return self

    def forward(self, logits: Tensor) -> Tensor:
        """Calibrated probabilities of label 1, in the logits' dtype (shape (N,)).

        Examples
        --------
        >>> p = torch.tensor([0.1, 0.2, 0.7, 0.9], dtype=torch.float64)
        >>> calibrator = HistogramBinning(2, from_logits=False).fit(p, torch.tensor([0, 1, 1, 1]))
        >>> calibrator(torch.tensor([0.3, 0.8], dtype=torch.float64))
        tensor([0.5000, 1.0000], dtype=torch.float64)
        """
        p = _check_binary_input(logits, "HistogramBinning", self.from_logits)
        edges, frequency = self.edges.to(p.device), self.frequency.to(p.device)
        value = frequency[torch.bucketize(p, edges, right=False)]
        return torch.where(torch.isnan(value), p, value).to(logits.dtype)

    def extra_repr(self) -> str:
        return f"n_bins={self.n_bins}, binning={self.binning!r}"


def _pool_adjacent_violators(values: list[float], weights: list[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in weighted least squares: blocks of
    neighbours are merged into their weighted mean while a block's mean is below the one
    before it (one pass with a stack of blocks, O(n))."""
    means: list[float] = []
    mass: list[float] = []
    sizes: list[int] = []
    for value, weight in zip(values, weights, strict=True):
        means.append(value)
        mass.append(weight)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m2, w2, n2 = means.pop(), mass.pop(), sizes.pop()
            w = mass[-1] + w2
            means[-1] = (means[-1] * mass[-1] + m2 * w2) / w
            mass[-1] = w
            sizes[-1] += n2
    out: list[float] = []
    for mean, size in zip(means, sizes, strict=True):
        out += [mean] * size
    return out


class IsotonicRegression(torch.nn.Module):
    """Isotonic regression (Zadrozny & Elkan, 2002) of binary logits of shape (N,): the
    non-decreasing function of ``p = sigmoid(logit)`` closest, in squared error, to the 0 / 1
    labels of the held-out data, by pool-adjacent-violators. As scikit-learn's
    ``IsotonicRegression(out_of_bounds="clip")``: samples with equal ``p`` are first merged
    into their mean label, the fitted values at the distinct held-out ``p`` are interpolated
    linearly in between, and clipped to the end values outside. :meth:`forward` returns
    probabilities, not logits.

    Parameters
    ----------
    from_logits : bool
        Whether inputs (to fit and forward) are logits or probabilities of label 1.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import IsotonicRegression
    >>> p = torch.tensor([0.1, 0.3, 0.5, 0.7], dtype=torch.float64)
    >>> iso = IsotonicRegression(from_logits=False).fit(p, torch.tensor([0, 1, 0, 1]))
    >>> iso.y_thresholds
    tensor([0.0000, 0.5000, 0.5000, 1.0000], dtype=torch.float64)
    >>> iso(torch.tensor([0.0, 0.2, 0.9], dtype=torch.float64))
    tensor([0.0000, 0.2500, 1.0000], dtype=torch.float64)
    """

    def __init__(self, *, from_logits: bool = True) -> None:
        super().__init__()
        self.from_logits = from_logits
        self.register_buffer("x_thresholds", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("y_thresholds", torch.zeros(0, dtype=torch.float64))

    def fit(self, logits: Tensor, labels: Tensor):
        """Fits the isotonic function on held-out ``logits`` (N,) and 0 / 1 ``labels`` (N,).

        Parameters
        ----------
        logits : Tensor
            (N,) binary logits (probabilities with ``from_logits=False``).
        labels : Tensor
            (N,) labels 0 / 1 (integer, bool or float).

        Returns
        -------
        self

        Examples
        --------
        >>> import torch
        >>> import logitops
        >>> from logitops.calibration import IsotonicRegression
        >>> iso = IsotonicRegression().fit(torch.randn(100), torch.randint(0, 2, (100,)))
        >>> bool((iso.y_thresholds.diff() >= 0).all())
        True
        """
        p, y = _check_binary_fit(logits, labels, "IsotonicRegression", self.from_logits)
        x, inverse, counts = torch.unique(p, sorted=True, return_inverse=True, return_counts=True)
        sums = torch.zeros(x.shape, dtype=torch.float64, device=p.device).index_add_(0, inverse, y)
        counts = counts.double()
        fitted = _pool_adjacent_violators((sums / counts).tolist(), counts.tolist())
        with torch.no_grad():
            self.x_thresholds = x
            self.y_thresholds = torch.tensor(fitted, dtype=torch.float64, device=p.device)
        return self

    def forward(self, logits: Tensor) -> Tensor:
        """Calibrated probabilities of label 1, in the logits' dtype (shape (N,)).

        Examples
        --------
        >>> p = torch.tensor([0.2, 0.4], dtype=torch.float64)
        >>> iso = IsotonicRegression(from_logits=False).fit(p, torch.tensor([0, 1]))
        >>> iso(torch.tensor([0.3], dtype=torch.float64))
        tensor([0.5000], dtype=torch.float64)
        """
        if self.x_thresholds.numel() == 0:
            raise RuntimeError("IsotonicRegression must be fitted (call fit) before it is applied")
        p = _check_binary_input(logits, "IsotonicRegression", self.from_logits)
        x, y = self.x_thresholds.to(p.device), self.y_thresholds.to(p.device)
        if x.numel() == 1:
            return y.expand(p.shape).to(logits.dtype)
        q = p.clamp(x[0], x[-1])
        right = torch.searchsorted(x, q, right=True).clamp(1, x.numel() - 1)
        x0, x1, y0, y1 = x[right - 1], x[right], y[right - 1], y[right]
        value = y0 + (q - x0) / (x1 - x0) * (y1 - y0)
        return value.to(logits.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The thresholds' number is the fit's: take the saved shapes.
        for name in ("x_thresholds", "y_thresholds"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# --------------------------------------------------------------------------------------------
# Per-row statistics: one read of the logits


class _Rows(NamedTuple):
    """What the metrics take from each row: top-1 confidence, whether the top-1 prediction is
    right, the NLL of the label and the Brier score of the row (float64, [N])."""

    confidence: Tensor
    correct: Tensor
    nll: Tensor
    brier: Tensor


def _row_stats(logits: Tensor, labels: Tensor, from_logits: bool) -> _Rows:
    what = "logits" if from_logits else "logits (probabilities, from_logits=False)"
    binary, _ = _check_inputs(logits, labels, what=what)
    x = logits.detach()
    if binary:
        p, y = _binary_probabilities(x, labels, from_logits)
        if from_logits:  # the NLL from the logit, exact where sigmoid rounds to 0 or 1
            z = x.double()
            nll = torch.where(
                y > 0.5, torch.nn.functional.softplus(-z), torch.nn.functional.softplus(z)
            )
        else:
            nll = -torch.where(y > 0.5, torch.log(p), torch.log1p(-p))
        return _Rows(torch.maximum(p, 1 - p), (p >= 0.5) == (y > 0.5), nll, (p - y) ** 2)
    if from_logits:
        stats, prediction = ops_calibration.calibration_row_stats(x, labels.long())
        if bool(torch.isnan(stats[0]).any()):
            raise ValueError(
                "logits must not contain NaN or +inf, and every row needs a finite logit "
                "(found a row whose softmax is undefined)"
            )
        return _Rows(stats[0], prediction == labels, stats[1], stats[2])
    probs = _checked_probabilities(x)
    top, prediction = probs.max(dim=1)
    p = probs.double()
    p_label = p.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    # sum_j (p_j - [j == y])^2 over the other classes plus (1 - p_y)^2
    brier = (p * p).sum(1) - p_label * p_label + (1 - p_label) ** 2
    return _Rows(top.double(), prediction == labels, -torch.log(p_label), brier)


def _checked_probabilities(x: Tensor) -> Tensor:
    x = x.to(accumulation_dtype(x.dtype))
    if bool(torch.isnan(x).any()):
        raise ValueError("logits must not contain NaN")
    if not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("with from_logits=False, logits are probabilities and must lie in [0, 1]")
    return x


def _binary_probabilities(x: Tensor, labels: Tensor, from_logits: bool) -> tuple[Tensor, Tensor]:
    """p = P(label 1) in float64 (sigmoid in the accumulation dtype) and the labels as 0. / 1."""
    if from_logits:
        xa = x.to(accumulation_dtype(x.dtype))
        if bool(torch.isnan(xa).any()):
            raise ValueError("logits must not contain NaN")
        p = torch.sigmoid(xa).double()
    else:
        p = _checked_probabilities(x).double()
    return p, labels.double()


def _class_probability_chunks(
    logits: Tensor, labels: Tensor, from_logits: bool, *, positive_only: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """(probabilities [n, G] float64, one-hot labels [n, G] float64) over chunks of rows, each
    softmax computed once, so that no [N, C] float64 copy exists. Binary inputs give the columns
    [1 - p, p] (G = 2), or [p] alone with positive_only."""
    binary, num_classes = _check_inputs(logits, labels)
    x = logits.detach()
    if binary:
        p, y = _binary_probabilities(x, labels, from_logits)
        if positive_only:
            yield p.unsqueeze(1), y.unsqueeze(1)
        else:
            yield torch.stack([1 - p, p], 1), torch.stack([1 - y, y], 1)
        return
    if not from_logits:
        _checked_probabilities(x)
    acc = accumulation_dtype(x.dtype)
    rows = max(1, _CHUNK_ELEMENTS // num_classes)
    for start in range(0, x.shape[0], rows):
        chunk = x[start : start + rows].to(acc)
        if from_logits:
            if bool(torch.isnan(chunk).any()):
                raise ValueError("logits must not contain NaN")
            chunk = torch.softmax(chunk, dim=1)
        y = labels[start : start + rows].long()
        one_hot = torch.zeros(chunk.shape, dtype=torch.float64, device=chunk.device)
        one_hot.scatter_(1, y.unsqueeze(1), 1.0)
        yield chunk.double(), one_hot


def _all_class_probabilities(
    logits: Tensor, labels: Tensor, from_logits: bool
) -> tuple[Tensor, Tensor]:
    """Every row's probabilities and one-hot label, [N, G] float64 each (for the rank-based
    classwise bins, which need all of them)."""
    chunks = list(_class_probability_chunks(logits, labels, from_logits))
    return torch.cat([p for p, _ in chunks]), torch.cat([y for _, y in chunks])


# Elements of one chunk of rows in the classwise passes (a few float64 temporaries of this size).
_CHUNK_ELEMENTS = 1 << 20


# --------------------------------------------------------------------------------------------
# Bins


def _bin_indices(confidence: Tensor, n_bins: int) -> Tensor:
    """Bin k holds confidences in (k / n_bins, (k + 1) / n_bins]; 0 goes to bin 0 and 1 to bin
    n_bins - 1. The edges k / n_bins are correctly rounded float64 values, so a confidence equal
    to ``k / n_bins`` (as Python computes it) lands in bin k - 1."""
    edges = torch.arange(1, n_bins, dtype=torch.float64, device=confidence.device) / n_bins
    index = torch.bucketize(confidence.double(), edges, right=False)
    return index.clamp_(0, n_bins - 1)


def _adaptive_bin_indices(values: Tensor, n_bins: int) -> Tensor:
    """Equal-mass bins along dim 0: the sample of rank r (0-based, ascending, ties in input
    order) among N goes to bin floor(r * n_bins / N), so bin sizes differ by at most one."""
    n = values.shape[0]
    order = torch.argsort(values, dim=0, stable=True)
    rank_bin = torch.arange(n, device=values.device) * n_bins // n
    rank_bin = rank_bin.view((n,) + (1,) * (values.dim() - 1)).expand(values.shape)
    return torch.empty_like(order).scatter_(0, order, rank_bin)


def _quantile_bin_indices(values: Tensor, n_bins: int) -> Tensor:
    """scikit-learn's calibration_curve(strategy="quantile"): edges at the linearly
    interpolated quantiles k / n_bins of the values, value v in the bin of the first inner edge
    >= v."""
    q = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=values.device)
    edges = torch.quantile(values.double(), q)
    return torch.searchsorted(edges[1:-1].contiguous(), values.double(), right=False)


def _assign_bins(values: Tensor, n_bins: int, binning: str) -> Tensor:
    if binning == "uniform":
        return _bin_indices(values, n_bins)
    if binning == "adaptive":
        return _adaptive_bin_indices(values, n_bins)
    return _quantile_bin_indices(values, n_bins)


def _top_label_bins(confidence: Tensor, correct: Tensor, index: Tensor, n_bins: int) -> Tensor:
    """[3, n_bins] float64: per bin the sample count, sum of confidences, number correct."""
    values = torch.stack([torch.ones_like(confidence), confidence, correct.double()], 1)
    out = torch.zeros(n_bins, 3, dtype=torch.float64, device=confidence.device)
    return out.index_add_(0, index, values).T.contiguous()


def _class_bins(probs: Tensor, one_hot: Tensor, index: Tensor, n_bins: int) -> Tensor:
    """[G, n_bins, 5] float64: per class and bin of its probability, the count and the sums of
    p, y, p^2 and p * y (y = 1 for the label's class)."""
    groups = probs.shape[1]
    flat = (torch.arange(groups, device=probs.device) * n_bins + index).reshape(-1)
    values = torch.stack(
        [torch.ones_like(probs), probs, one_hot, probs * probs, probs * one_hot], -1
    ).reshape(-1, 5)
    out = torch.zeros(groups * n_bins, 5, dtype=torch.float64, device=probs.device)
    return out.index_add_(0, flat, values).view(groups, n_bins, 5)


def _errors_from_bins(count: Tensor, conf_sum: Tensor, correct_sum: Tensor, norm: str) -> Tensor:
    """Calibration error of each group (leading dims) from its per-bin sums (last dim)."""
    total = count.sum(-1)
    occupied = count > 0
    gap = torch.where(occupied, (correct_sum - conf_sum).abs() / count.clamp(min=1), 0.0)
    if norm == "l1":
        return (gap * count).sum(-1) / total
    if norm == "max":
        return gap.amax(-1)
    return ((gap * gap * count).sum(-1) / total).sqrt()


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        names = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {names}, got {value!r}")


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_NORMS = ("l1", "max", "l2")
_BINNINGS = ("uniform", "adaptive")


# --------------------------------------------------------------------------------------------
# Metrics, as functions of one batch


def calibration_error(
    logits: Tensor,
    labels: Tensor,
    *,
    n_bins: int = 15,
    norm: str = "l1",
    binning: str = "uniform",
    classwise: bool = False,
    from_logits: bool = True,
) -> Tensor:
    r"""Calibration error over ``n_bins`` confidence bins: of the top-1 prediction, or of every
    class (``classwise=True``).

    With bin ``b`` holding ``n_b`` of the ``N`` samples, mean confidence ``conf_b`` and
    accuracy ``acc_b``:

    - ``norm="l1"``: expected calibration error, ECE ``= sum_b n_b / N * |acc_b - conf_b|``;
    - ``norm="max"``: maximum calibration error, MCE ``= max_b |acc_b - conf_b|`` over the
      non-empty bins;
    - ``norm="l2"``: RMS calibration error ``= sqrt(sum_b n_b / N * (acc_b - conf_b)**2)``.

    Top-label (default): the confidence is the largest softmax probability and the prediction
    its class (the first on ties); ``acc_b`` is the fraction of right predictions. Binary
    (shape (N,)): with ``p = sigmoid(logit)``, the prediction is ``p >= 0.5`` and the confidence
    ``max(p, 1 - p)``. Classwise (Kull et al. 2019, "classwise-ECE"): for each class ``c`` the
    samples are binned by their probability ``p_c``, ``conf_b`` is the mean ``p_c`` and
    ``acc_b`` the fraction whose label is ``c``; the result is the mean over the classes of
    each class's error (binary inputs count as the two classes ``1 - p`` and ``p``).

    Bins: ``binning="uniform"`` has equal-width bins, bin ``k`` is
    ``(k / n_bins, (k + 1) / n_bins]`` (a confidence of exactly 0 belongs to the first bin and
    exactly 1 to the last; torchmetrics' bins are closed on the left instead, which matters only
    for a confidence exactly on an inner edge). ``binning="adaptive"`` has equal-mass bins: the
    samples sorted by confidence (stable, so ties keep their input order) are cut into
    ``n_bins`` runs whose sizes differ by at most one (rank ``r`` goes to bin
    ``floor(r * n_bins / N)``); classwise, per class.

    Multi-class logits are read once by the fused ``calibration_row_stats`` op (confidence and
    prediction per row, on the CPU and CUDA), so no softmax is materialized; the classwise
    error computes the softmax once, in chunks of rows.

    Parameters
    ----------
    logits : Tensor
        (N, C) logits, or (N,) binary logits; float32 / float64 / bfloat16 / float16. With
        ``from_logits=False``: (N, C) class probabilities (rows should sum to 1; not checked),
        or (N,) probabilities of the positive class, all in [0, 1].
    labels : Tensor
        (N,) integer class indices in [0, C); for binary inputs 0 / 1 (integer, bool or float).
    n_bins : int
        Number of bins.
    norm : {"l1", "max", "l2"}
    binning : {"uniform", "adaptive"}
        Equal-width or equal-mass bins.
    classwise : bool
        Top-label error (False) or the mean classwise error (True).
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
    >>> adaptive = calibration_error(logits, labels, binning="adaptive")
    >>> classwise = calibration_error(logits, labels, classwise=True)
    >>> calibration_error(torch.tensor([0.9, 0.2]), torch.tensor([1, 1]), from_logits=False)
    tensor(0.4500)
    """
    _check_choice("norm", norm, _NORMS)
    _check_choice("binning", binning, _BINNINGS)
    _check_n_bins(n_bins)
    if classwise:
        if binning == "uniform":
            bins = _uniform_class_bins(logits, labels, n_bins, from_logits)
        else:
            bins = _adaptive_class_bins(logits, labels, n_bins, from_logits)
        result = _errors_from_bins(bins[..., 0], bins[..., 1], bins[..., 2], norm).mean()
    else:
        rows = _row_stats(logits, labels, from_logits)
        index = _assign_bins(rows.confidence, n_bins, binning)
        bins = _top_label_bins(rows.confidence, rows.correct, index, n_bins)
        result = _errors_from_bins(bins[0], bins[1], bins[2], norm)
    return result.to(_out_dtype(logits.dtype))


def _uniform_class_bins(
    logits: Tensor, labels: Tensor, n_bins: int, from_logits: bool, positive_only: bool = False
) -> Tensor:
    total = None
    for probs, one_hot in _class_probability_chunks(
        logits, labels, from_logits, positive_only=positive_only
    ):
        part = _class_bins(probs, one_hot, _bin_indices(probs, n_bins), n_bins)
        total = part if total is None else total.add_(part)
    return total


def _adaptive_class_bins(logits: Tensor, labels: Tensor, n_bins: int, from_logits: bool) -> Tensor:
    # Ranks per class need every sample's probability: the [N, G] float64 probabilities exist.
    probs, one_hot = _all_class_probabilities(logits, labels, from_logits)
    return _class_bins(probs, one_hot, _adaptive_bin_indices(probs, n_bins), n_bins)


def _ace_from_bins(bins: Tensor) -> Tensor:
    count, conf_sum, correct_sum = bins[..., 0], bins[..., 1], bins[..., 2]
    occupied = count > 0
    gap = (correct_sum[occupied] - conf_sum[occupied]).abs() / count[occupied]
    return gap.mean()


def adaptive_calibration_error(
    logits: Tensor, labels: Tensor, *, n_bins: int = 15, from_logits: bool = True
) -> Tensor:
    r"""Adaptive calibration error, ACE (Nixon et al. 2019, "Measuring Calibration in Deep
    Learning"): for every class, the samples are cut into ``n_bins`` equal-mass bins of their
    probability of that class (as ``calibration_error(binning="adaptive", classwise=True)``);
    ACE is the plain mean of ``|acc - conf|`` over all (class, bin) pairs,
    ``1 / (C R) sum_c sum_r |acc(r, c) - conf(r, c)|``, each bin weighing the same (empty bins,
    possible only when N < n_bins, are left out of the mean). Binary inputs count as the two
    classes ``1 - p`` and ``p``.

    The probabilities of every sample are needed to rank them per class, so this function holds
    an [N, C] float64 copy of them (C times the memory of the top-label metrics).

    Parameters
    ----------
    logits : Tensor
        (N, C) logits or (N,) binary logits (probabilities with ``from_logits=False``), as for
        :func:`calibration_error`.
    labels : Tensor
        (N,) class indices (0 / 1 for binary inputs).
    n_bins : int
        Bins (ranges) per class.
    from_logits : bool
        Whether ``logits`` are logits or probabilities.

    Returns
    -------
    Tensor
        0-dim: float64 for float64 input, otherwise float32.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import adaptive_calibration_error
    >>> logits, labels = 3 * torch.randn(2000, 5), torch.randint(0, 5, (2000,))
    >>> ace = adaptive_calibration_error(logits, labels)
    >>> bool(0 < ace < 1)
    True
    """
    _check_n_bins(n_bins)
    bins = _adaptive_class_bins(logits, labels, n_bins, from_logits)
    return _ace_from_bins(bins).to(_out_dtype(logits.dtype))


class BrierDecomposition(NamedTuple):
    """The Brier score and its decomposition over bins of the predicted probabilities (Murphy
    1973, with the two within-bin terms of Stephenson et al. 2008 that make it exact):
    ``score = reliability - resolution + uncertainty + within_bin_variance - 2 *
    within_bin_covariance``. Summed over the classes for multi-class inputs (each class's
    probability binned on its own), the positive class alone for binary inputs.

    - ``reliability``: ``1/N sum_b n_b (mean p_b - freq_b)^2``, the calibration term (lower is
      better);
    - ``resolution``: ``1/N sum_b n_b (freq_b - freq)^2``, how far the bins' frequencies are
      from the base rate (higher is better);
    - ``uncertainty``: ``freq (1 - freq)``, of the labels alone;
    - ``within_bin_variance`` and ``within_bin_covariance``: ``1/N sum_b sum_{i in b}`` of
      ``(p_i - mean p_b)^2`` and ``(p_i - mean p_b)(y_i - freq_b)``; both 0 when the
      probabilities within each bin are equal.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import brier_score
    >>> d = brier_score(torch.randn(500, 4), torch.randint(0, 4, (500,)), decompose=True)
    >>> total = d.reliability - d.resolution + d.uncertainty
    >>> total = total + d.within_bin_variance - 2 * d.within_bin_covariance
    >>> bool(torch.isclose(total, d.score))
    True
    """

    score: Tensor
    reliability: Tensor
    resolution: Tensor
    uncertainty: Tensor
    within_bin_variance: Tensor
    within_bin_covariance: Tensor


def _brier_decomposition(score: Tensor, bins: Tensor, dtype: torch.dtype) -> BrierDecomposition:
    count, p_sum, y_sum, pp_sum, py_sum = bins.unbind(-1)  # [G, B] each
    total = count.sum(-1, keepdim=True)  # N per class
    safe = count.clamp(min=1)
    mean_p, freq = p_sum / safe, y_sum / safe
    base = y_sum.sum(-1, keepdim=True) / total
    reliability = (count * (mean_p - freq) ** 2).sum(-1) / total[:, 0]
    resolution = (count * (freq - base) ** 2).sum(-1) / total[:, 0]
    uncertainty = base[:, 0] * (1 - base[:, 0])
    variance = (pp_sum - p_sum * mean_p).sum(-1) / total[:, 0]
    covariance = (py_sum - p_sum * freq).sum(-1) / total[:, 0]
    parts = (reliability, resolution, uncertainty, variance, covariance)
    return BrierDecomposition(score.to(dtype), *(t.sum().to(dtype) for t in parts))


def brier_score(
    logits: Tensor,
    labels: Tensor,
    *,
    decompose: bool = False,
    n_bins: int = 15,
    from_logits: bool = True,
) -> Tensor | BrierDecomposition:
    r"""Brier score: the mean over samples of ``sum_c (p_c - [c == label])^2`` for (N, C)
    inputs (range [0, 2], scikit-learn's ``brier_score_loss`` of multi-class inputs), and of
    ``(p - label)^2`` with ``p = sigmoid(logit)`` for binary inputs of shape (N,) (range
    [0, 1], scikit-learn's binary ``brier_score_loss``).

    Multi-class logits are read once by the fused ``calibration_row_stats`` op, which forms each
    row's score from the probabilities of the other classes (``(1 - p_y)^2 + sum_{c != y}
    p_c^2``), so a confident right prediction keeps its tiny score to full relative precision.

    Parameters
    ----------
    logits : Tensor
        (N, C) logits or (N,) binary logits (probabilities with ``from_logits=False``), as for
        :func:`calibration_error`.
    labels : Tensor
        (N,) class indices (0 / 1 for binary inputs).
    decompose : bool
        Also return the reliability / resolution / uncertainty decomposition
        (:class:`BrierDecomposition`) over ``n_bins`` equal-width bins of each class's
        probability; the softmax is then computed once more, in chunks of rows.
    n_bins : int
        Bins of the decomposition.
    from_logits : bool
        Whether ``logits`` are logits or probabilities.

    Returns
    -------
    Tensor or BrierDecomposition
        The 0-dim score (float64 for float64 input, otherwise float32), or with
        ``decompose=True`` a :class:`BrierDecomposition` of such tensors.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import brier_score
    >>> brier_score(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))  # p = (0.5, 0.5)
    tensor(0.5000)
    >>> d = brier_score(torch.randn(100), torch.randint(0, 2, (100,)), decompose=True)
    >>> sorted(d._fields)[:3]
    ['reliability', 'resolution', 'score']
    """
    _check_n_bins(n_bins)
    rows = _row_stats(logits, labels, from_logits)
    dtype = _out_dtype(logits.dtype)
    score = rows.brier.mean()
    if not decompose:
        return score.to(dtype)
    bins = _uniform_class_bins(logits, labels, n_bins, from_logits, positive_only=True)
    return _brier_decomposition(score, bins, dtype)


def negative_log_likelihood(logits: Tensor, labels: Tensor, *, from_logits: bool = True) -> Tensor:
    r"""Mean negative log-likelihood of the labels, ``mean_i -log p_i(label_i)``: the
    cross-entropy of (N, C) logits, the binary cross-entropy of (N,) logits; of probabilities
    with ``from_logits=False`` (a probability of 0 for the label gives ``inf``).

    Multi-class logits are read once by the fused ``calibration_row_stats`` op, the same pass
    that gives :func:`calibration_error` its confidences.

    Parameters
    ----------
    logits : Tensor
        (N, C) logits or (N,) binary logits (probabilities with ``from_logits=False``).
    labels : Tensor
        (N,) class indices (0 / 1 for binary inputs).
    from_logits : bool
        Whether ``logits`` are logits or probabilities.

    Returns
    -------
    Tensor
        0-dim: float64 for float64 input, otherwise float32.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import negative_log_likelihood
    >>> negative_log_likelihood(torch.zeros(3, 4), torch.tensor([0, 1, 3]))  # log 4
    tensor(1.3863)
    """
    rows = _row_stats(logits, labels, from_logits)
    return rows.nll.mean().to(_out_dtype(logits.dtype))


def calibration_curve(
    logits: Tensor,
    labels: Tensor,
    *,
    n_bins: int = 5,
    binning: str = "uniform",
    from_logits: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""The points of a reliability curve: per non-empty bin, the observed frequency and the
    mean predicted probability, in bin order.

    Binary inputs (N,): scikit-learn's ``calibration_curve(labels, sigmoid(logits))``, the
    frequency of label 1 against the mean probability of label 1, with the same bins:
    ``"uniform"`` (equal width, closed on the right), ``"quantile"`` (edges at the linearly
    interpolated quantiles of the probabilities, scikit-learn's ``strategy="quantile"``) or
    ``"adaptive"`` (equal-mass bins by rank, as in :func:`calibration_error`). Multi-class
    inputs (N, C): the top-label accuracy against the mean top-1 confidence (the bars of
    :func:`reliability_diagram`).

    Parameters
    ----------
    logits : Tensor
        (N,) binary or (N, C) multi-class logits (probabilities with ``from_logits=False``).
    labels : Tensor
        (N,) labels.
    n_bins : int
        Number of bins (scikit-learn's default 5).
    binning : {"uniform", "quantile", "adaptive"}
    from_logits : bool
        Whether ``logits`` are logits or probabilities.

    Returns
    -------
    (Tensor, Tensor)
        ``(prob_true, prob_pred)``, 1-D, one entry per non-empty bin: float64 for float64
        input, otherwise float32.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import calibration_curve
    >>> probs = torch.tensor([0.1, 0.3, 0.35, 0.8, 0.9], dtype=torch.float64)
    >>> calibration_curve(probs, torch.tensor([0, 0, 1, 1, 1]), n_bins=2, from_logits=False)
    (tensor([0.3333, 1.0000], dtype=torch.float64), tensor([0.2500, 0.8500], dtype=torch.float64))
    """
    _check_choice("binning", binning, ("uniform", "quantile", "adaptive"))
    _check_n_bins(n_bins)
    binary, _ = _check_inputs(logits, labels)
    if binary:
        p, y = _binary_probabilities(logits.detach(), labels, from_logits)
        index = _assign_bins(p, n_bins, binning)
        bins = _top_label_bins(p, y > 0.5, index, n_bins)
    else:
        rows = _row_stats(logits, labels, from_logits)
        index = _assign_bins(rows.confidence, n_bins, binning)
        bins = _top_label_bins(rows.confidence, rows.correct, index, n_bins)
    occupied = bins[0] > 0
    count = bins[0][occupied]
    dtype = _out_dtype(logits.dtype)
    return (bins[2][occupied] / count).to(dtype), (bins[1][occupied] / count).to(dtype)


# --------------------------------------------------------------------------------------------
# Stateful metrics: update per batch, compute once (across ranks)


def _distributed(process_group) -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size(process_group) > 1
    )


def _all_gather_rows(tensor: Tensor, process_group) -> Tensor:
    """Concatenation along dim 0 of every rank's tensor (sizes may differ), in rank order."""
    world = torch.distributed.get_world_size(process_group)
    size = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    torch.distributed.all_gather(sizes, size, group=process_group)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded, group=process_group)
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])


class _StatefulMetric(abc.ABC):
    """update(logits, labels) per batch, compute() once, reset() to start over; the states are
    float64 sums (and, for the rank-based metrics, per-sample values) that compute() sums (or
    concatenates) across the ranks of ``process_group`` when torch.distributed is initialized
    with more than one rank, so every rank must call compute() (a collective) and gets the same
    result. States live on the device of the first update's logits (CPU before it; move them
    with :meth:`to`, e.g. for NCCL on a rank that saw no batch)."""

    def __init__(self, *, from_logits: bool, process_group) -> None:
        if not isinstance(from_logits, bool):
            raise TypeError(f"from_logits must be a bool, got {type(from_logits).__name__}")
        self.from_logits = from_logits
        self.process_group = process_group
        self.reset()

    # Subclasses: the shapes of the summed states, the trailing shapes of the gathered ones, the
    # states of one batch, and the metric from the (synchronized) states.
    def _sum_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def _cat_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    @abc.abstractmethod
    def _batch_states(
        self, logits: Tensor, labels: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]: ...

    @abc.abstractmethod
    def _compute(self, sums: dict[str, Tensor], cats: dict[str, Tensor]) -> Tensor: ...

    @abc.abstractmethod
    def _count(self, sums: dict[str, Tensor], cats: dict[str, Tensor]) -> int: ...

    def reset(self) -> None:
        """Forgets every batch seen (the states go back to zero, on the CPU)."""
        self._sums = {
            name: torch.zeros(shape, dtype=torch.float64)
            for name, shape in self._sum_shapes().items()
        }
        self._cats: dict[str, list[Tensor]] = {name: [] for name in self._cat_shapes()}
        self._device = torch.device("cpu")
        self._all_float64 = True

    def to(self, device: torch.device | str):
        """Moves the states to ``device``; returns self."""
        self._device = torch.device(device)
        self._sums = {k: v.to(self._device) for k, v in self._sums.items()}
        self._cats = {k: [t.to(self._device) for t in v] for k, v in self._cats.items()}
        return self

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Adds one batch (same inputs as the functional metric) to the states."""
        sums, cats = self._batch_states(logits, labels)
        if logits.device != self._device:
            self.to(logits.device)
        for name, value in sums.items():
            self._sums[name].add_(value)
        for name, value in cats.items():
            self._cats[name].append(value)
        self._all_float64 &= logits.dtype == torch.float64

    def compute(self) -> Tensor:
        """The metric over every batch since the last reset, on every rank (0-dim, float64 if
        every batch was float64, else float32)."""
        sums = {name: value.clone() for name, value in self._sums.items()}
        cats = {
            name: torch.cat(parts)
            if parts
            else torch.zeros((0,) + shape, dtype=torch.float64, device=self._device)
            for (name, parts), shape in zip(
                self._cats.items(), self._cat_shapes().values(), strict=True
            )
        }
        if _distributed(self.process_group):
            for value in sums.values():
                torch.distributed.all_reduce(value, group=self.process_group)
            cats = {
                name: _all_gather_rows(value, self.process_group) for name, value in cats.items()
            }
            flags = torch.tensor([float(self._all_float64)], device=self._device)
            torch.distributed.all_reduce(
                flags, op=torch.distributed.ReduceOp.MIN, group=self.process_group
            )
            all_float64 = bool(flags[0] > 0)
        else:
            all_float64 = self._all_float64
        if self._count(sums, cats) == 0:
            raise RuntimeError(
                f"{type(self).__name__}.compute() needs at least one sample; call update() first"
            )
        result = self._compute(sums, cats)
        dtype = torch.float64 if all_float64 else torch.float32
        if isinstance(result, tuple):
            return type(result)(*(t.to(dtype) for t in result))
        return result.to(dtype)


def _check_num_classes_arg(num_classes: int | None, required: bool, what: str) -> None:
    if num_classes is None:
        if required:
            raise ValueError(f"num_classes is required {what} (1 for binary logits of shape (N,))")
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1 (1: binary logits), got {num_classes!r}")


def _check_batch_classes(num_classes: int | None, binary: bool, classes: int) -> None:
    if num_classes is None:
        return
    if (num_classes == 1) != binary or (not binary and classes != num_classes):
        got = "binary logits of shape (N,)" if binary else f"{classes} classes"
        raise ValueError(f"this metric has num_classes={num_classes} but the logits have {got}")


class CalibrationError(_StatefulMetric):
    """:func:`calibration_error` accumulated over batches (and ranks), without keeping the
    logits: equal-width bins keep per-bin sums ([3, n_bins], or [C, n_bins, 5] classwise), the
    equal-mass bins keep each sample's confidence and correctness (top-label) or its class
    probabilities (classwise, [N, C]), since ranks are global.

    Parameters
    ----------
    n_bins, norm, binning, classwise, from_logits
        As for :func:`calibration_error`.
    num_classes : int, optional
        C (1 for binary logits of shape (N,)); required with ``classwise=True``, checked
        against every batch when given.
    process_group : optional
        The torch.distributed group whose ranks' states compute() combines (default: the
        world, when initialized).

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import CalibrationError, calibration_error
    >>> metric = CalibrationError(n_bins=10)
    >>> batches = [(3 * torch.randn(64, 5), torch.randint(0, 5, (64,))) for _ in range(4)]
    >>> for logits, labels in batches:
    ...     metric.update(logits, labels)
    >>> logits, labels = (torch.cat(t) for t in zip(*batches))
    >>> bool(torch.isclose(metric.compute(), calibration_error(logits, labels, n_bins=10)))
    True
    >>> metric.reset()
    """

    def __init__(
        self,
        n_bins: int = 15,
        norm: str = "l1",
        binning: str = "uniform",
        classwise: bool = False,
        *,
        num_classes: int | None = None,
        from_logits: bool = True,
        process_group=None,
    ) -> None:
        _check_n_bins(n_bins)
        _check_choice("norm", norm, _NORMS)
        _check_choice("binning", binning, _BINNINGS)
        _check_num_classes_arg(num_classes, classwise, "with classwise=True")
        self.n_bins, self.norm, self.binning, self.classwise = n_bins, norm, binning, classwise
        self.num_classes = num_classes
        self._groups = None if num_classes is None else max(2, num_classes)
        super().__init__(from_logits=from_logits, process_group=process_group)

    def _sum_shapes(self):
        if self.binning != "uniform":
            return {}
        if self.classwise:
            return {"class_bins": (self._groups, self.n_bins, 5)}
        return {"bins": (3, self.n_bins)}

    def _cat_shapes(self):
        if self.binning == "uniform":
            return {}
        if self.classwise:
            return {"probs": (self._groups,), "one_hot": (self._groups,)}
        return {"confidence": (), "correct": ()}

    def _batch_states(self, logits, labels):
        binary, classes = _check_inputs(logits, labels)
        _check_batch_classes(self.num_classes, binary, classes)
        if self.binning == "uniform":
            if self.classwise:
                return {
                    "class_bins": _uniform_class_bins(logits, labels, self.n_bins, self.from_logits)
                }, {}
            rows = _row_stats(logits, labels, self.from_logits)
            index = _bin_indices(rows.confidence, self.n_bins)
            return {"bins": _top_label_bins(rows.confidence, rows.correct, index, self.n_bins)}, {}
        if self.classwise:
            probs, one_hot = _all_class_probabilities(logits, labels, self.from_logits)
            return {}, {"probs": probs, "one_hot": one_hot}
        rows = _row_stats(logits, labels, self.from_logits)
        return {}, {"confidence": rows.confidence, "correct": rows.correct.double()}

    def _count(self, sums, cats):
        if "bins" in sums:
            return int(sums["bins"][0].sum())
        if "class_bins" in sums:
            return int(sums["class_bins"][0, :, 0].sum())
        return next(iter(cats.values())).shape[0]

    def _compute(self, sums, cats):
        if "bins" in sums:
            bins = sums["bins"]
            return _errors_from_bins(bins[0], bins[1], bins[2], self.norm)
        if "class_bins" in sums:
            bins = sums["class_bins"]
        elif "probs" in cats:
            probs, one_hot = cats["probs"], cats["one_hot"]
            bins = _class_bins(
                probs, one_hot, _adaptive_bin_indices(probs, self.n_bins), self.n_bins
            )
        else:
            confidence, correct = cats["confidence"], cats["correct"]
            index = _adaptive_bin_indices(confidence, self.n_bins)
            bins = _top_label_bins(confidence, correct, index, self.n_bins)
            return _errors_from_bins(bins[0], bins[1], bins[2], self.norm)
        return _errors_from_bins(bins[..., 0], bins[..., 1], bins[..., 2], self.norm).mean()


class AdaptiveCalibrationError(_StatefulMetric):
    """:func:`adaptive_calibration_error` accumulated over batches (and ranks). The ranks
    are global, so the state is every sample's class probabilities ([N, C] float64) and
    one-hot label, concatenated across ranks by compute().

    Parameters
    ----------
    num_classes : int
        C (1 for binary logits of shape (N,)).
    n_bins : int
        Bins per class.
    from_logits : bool
        Whether the inputs are logits or probabilities.
    process_group : optional
        The torch.distributed group compute() gathers over.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import AdaptiveCalibrationError
    >>> metric = AdaptiveCalibrationError(num_classes=3, n_bins=5)
    >>> for _ in range(3):
    ...     metric.update(torch.randn(50, 3), torch.randint(0, 3, (50,)))
    >>> bool(0 <= metric.compute() <= 1)
    True
    """

    def __init__(
        self,
        num_classes: int,
        n_bins: int = 15,
        *,
        from_logits: bool = True,
        process_group=None,
    ) -> None:
        _check_n_bins(n_bins)
        _check_num_classes_arg(num_classes, True, "")
        self.num_classes, self.n_bins = num_classes, n_bins
        self._groups = max(2, num_classes)
        super().__init__(from_logits=from_logits, process_group=process_group)

    def _cat_shapes(self):
        return {"probs": (self._groups,), "one_hot": (self._groups,)}

    def _batch_states(self, logits, labels):
        binary, classes = _check_inputs(logits, labels)
        _check_batch_classes(self.num_classes, binary, classes)
        probs, one_hot = _all_class_probabilities(logits, labels, self.from_logits)
        return {}, {"probs": probs, "one_hot": one_hot}

    def _count(self, sums, cats):
        return cats["probs"].shape[0]

    def _compute(self, sums, cats):
        probs, one_hot = cats["probs"], cats["one_hot"]
        index = _adaptive_bin_indices(probs, self.n_bins)
        return _ace_from_bins(_class_bins(probs, one_hot, index, self.n_bins))


class BrierScore(_StatefulMetric):
    """:func:`brier_score` accumulated over batches (and ranks): the state is the sum of the
    rows' scores and their number, plus with ``decompose=True`` the per-class, per-bin sums of
    the decomposition ([C, n_bins, 5]). compute() returns the score, or a
    :class:`BrierDecomposition`.

    Parameters
    ----------
    decompose, n_bins, from_logits
        As for :func:`brier_score`.
    num_classes : int, optional
        C (1 for binary logits of shape (N,)); required with ``decompose=True``.
    process_group : optional
        The torch.distributed group compute() sums over.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import BrierScore
    >>> metric = BrierScore(decompose=True, num_classes=4)
    >>> for _ in range(3):
    ...     metric.update(torch.randn(32, 4), torch.randint(0, 4, (32,)))
    >>> d = metric.compute()
    >>> bool(d.score > 0 and d.uncertainty > 0)
    True
    """

    def __init__(
        self,
        decompose: bool = False,
        n_bins: int = 15,
        *,
        num_classes: int | None = None,
        from_logits: bool = True,
        process_group=None,
    ) -> None:
        _check_n_bins(n_bins)
        _check_num_classes_arg(num_classes, decompose, "with decompose=True")
        self.decompose, self.n_bins, self.num_classes = decompose, n_bins, num_classes
        super().__init__(from_logits=from_logits, process_group=process_group)

    def _sum_shapes(self):
        shapes = {"totals": (2,)}
        if self.decompose:
            shapes["class_bins"] = (self.num_classes, self.n_bins, 5)
        return shapes

    def _batch_states(self, logits, labels):
        binary, classes = _check_inputs(logits, labels)
        _check_batch_classes(self.num_classes, binary, classes)
        rows = _row_stats(logits, labels, self.from_logits)
        sums = {"totals": torch.stack([torch.ones_like(rows.brier).sum(), rows.brier.sum()])}
        if self.decompose:
            sums["class_bins"] = _uniform_class_bins(
                logits, labels, self.n_bins, self.from_logits, positive_only=True
            )
        return sums, {}

    def _count(self, sums, cats):
        return int(sums["totals"][0])

    def compute(self) -> Tensor | BrierDecomposition:
        """The score over every batch since the last reset (a :class:`BrierDecomposition` with
        ``decompose=True``), on every rank."""
        return super().compute()

    def _compute(self, sums, cats):
        score = sums["totals"][1] / sums["totals"][0]
        if not self.decompose:
            return score
        return _brier_decomposition(score, sums["class_bins"], torch.float64)


class NegativeLogLikelihood(_StatefulMetric):
    """:func:`negative_log_likelihood` accumulated over batches (and ranks): the state is the
    sum of the rows' NLL and their number.

    Parameters
    ----------
    from_logits : bool
        Whether the inputs are logits or probabilities.
    process_group : optional
        The torch.distributed group compute() sums over.

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import NegativeLogLikelihood
    >>> metric = NegativeLogLikelihood()
    >>> metric.update(torch.zeros(2, 4), torch.tensor([0, 1]))
    >>> metric.update(torch.zeros(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]))
    >>> metric.compute()  # log 4
    tensor(1.3863)
    """

    def __init__(self, *, from_logits: bool = True, process_group=None) -> None:
        super().__init__(from_logits=from_logits, process_group=process_group)

    def _sum_shapes(self):
        return {"totals": (2,)}

    def _batch_states(self, logits, labels):
        rows = _row_stats(logits, labels, self.from_logits)
        return {"totals": torch.stack([torch.ones_like(rows.nll).sum(), rows.nll.sum()])}, {}

    def _count(self, sums, cats):
        return int(sums["totals"][0])

    def _compute(self, sums, cats):
        return sums["totals"][1] / sums["totals"][0]


# --------------------------------------------------------------------------------------------
# Figures


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "the calibration figures need matplotlib, which logitops does not install by default; "
            "install it with `pip install logitops[examples]` (or `pip install matplotlib`)"
        ) from error
    return Figure


def _diagram_bins(logits, labels, n_bins, from_logits):
    _check_n_bins(n_bins)
    rows = _row_stats(logits, labels, from_logits)
    index = _bin_indices(rows.confidence, n_bins)
    bins = _top_label_bins(rows.confidence, rows.correct, index, n_bins)
    return rows, [t.cpu().tolist() for t in bins]


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
    Figure = _figure_class()
    rows, (count_, conf_sum_, correct_sum_) = _diagram_bins(logits, labels, n_bins, from_logits)
    total = rows.confidence.numel()
    ece = sum(abs(c - s) for c, s in zip(correct_sum_, conf_sum_, strict=True)) / total

    width = 1.0 / n_bins
    centers = [(k + 0.5) * width for k in range(n_bins)]
    shown = [k for k in range(n_bins) if count_[k] > 0]
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


def confidence_histogram(
    logits: Tensor,
    labels: Tensor,
    *,
    n_bins: int = 15,
    path: str | os.PathLike[str] | None = None,
    from_logits: bool = True,
    title: str | None = None,
):
    """Confidence histogram (the upper panels of Guo et al. 2017's Figure 1): the fraction of
    samples in each equal-width bin of the top-1 confidence, with the accuracy and the mean
    confidence as vertical lines; a confidence line right of the accuracy line is
    over-confidence. Shown beside :func:`reliability_diagram`.

    Same inputs and binning as :func:`calibration_error`; needs matplotlib (as
    :func:`reliability_diagram`).

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
        Prefix of the title (accuracy and mean confidence are always appended).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import torch
    >>> import logitops
    >>> from logitops.calibration import confidence_histogram
    >>> logits, labels = 3 * torch.randn(2000, 10), torch.randint(0, 10, (2000,))
    >>> fig = confidence_histogram(logits, labels, path="confidence.png")  # doctest: +SKIP
    """
    Figure = _figure_class()
    rows, (count_, _, _) = _diagram_bins(logits, labels, n_bins, from_logits)
    total = rows.confidence.numel()
    accuracy = float(rows.correct.double().mean())
    mean_conf = float(rows.confidence.mean())
    width = 1.0 / n_bins
    centers = [(k + 0.5) * width for k in range(n_bins)]

    fig = Figure(figsize=(5.0, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.bar(centers, [c / total for c in count_], width=width, color="tab:blue", edgecolor="black")
    ax.axvline(accuracy, color="tab:green", linestyle="--", label=f"Accuracy {accuracy:.3f}")
    ax.axvline(mean_conf, color="tab:red", linestyle=":", label=f"Mean confidence {mean_conf:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Fraction of samples")
    ax.legend(loc="upper left")
    heading = (
        f"accuracy {100 * accuracy:.2f}%, mean confidence {100 * mean_conf:.2f}% (N = {total})"
    )
    ax.set_title(f"{title}\n{heading}" if title else heading)
    if path is not None:
        fig.savefig(path, format="png", dpi=100)
    return fig
