"""Calibrators beyond temperature / vector scaling: matrix scaling and Dirichlet calibration
(recovering known maps, the ODIR penalty), Platt scaling (against scikit-learn's logistic
regression and sigmoid calibration), histogram binning (against a float64 loop) and isotonic
regression (against scikit-learn's IsotonicRegression)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICES

import logitops
from logitops.calibration import (
    DirichletCalibrator,
    HistogramBinning,
    IsotonicRegression,
    MatrixScaler,
    PlattScaler,
    TemperatureScaler,
)

EMULATION_FIT = (
    "iterative fits (LBFGS) call the cross-entropy kernel hundreds of times on thousands of rows;"
    " the kernel itself is covered by test_cross_entropy"
)


def nll(logits, labels):
    with torch.no_grad():
        if logits.dim() == 1:
            return float(logitops.binary_cross_entropy_with_logits(logits, labels.double()))
        return float(logitops.cross_entropy(logits, labels))


def sample_labels(logits, generator):
    return torch.multinomial(torch.softmax(logits, 1), 1, generator=generator).squeeze(1)


def objective(calibrator, logits, labels):
    """The fit's objective (mean NLL + ODIR) at the calibrator's parameters, float64."""
    with torch.no_grad():
        w, b = calibrator.weight.double(), calibrator.bias.double()
        x = logits.double()
        if isinstance(calibrator, DirichletCalibrator):
            x = torch.log_softmax(x, 1)
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, labels)
        c = w.shape[0]
        off = w - torch.diag(torch.diagonal(w))
        loss += calibrator.off_diagonal_l2 / (c * (c - 1)) * (off**2).sum()
        return float(loss + calibrator.intercept_l2 / c * (b**2).sum())


# ---------------------------------------------------------------------------------------------
# Matrix scaling and Dirichlet calibration


@pytest.mark.emulation_skip(EMULATION_FIT)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", [MatrixScaler, DirichletCalibrator])
def test_recovers_a_known_map(device, kind):
    g = torch.Generator().manual_seed(11)
    c = 4
    z = torch.randn(20000, c, generator=g, dtype=torch.float64) * 2
    true_w = torch.eye(c, dtype=torch.float64) * 0.7 + 0.3 * torch.randn(c, c, generator=g)
    true_b = torch.linspace(-0.5, 0.5, c, dtype=torch.float64)
    inputs = torch.log_softmax(z, 1) if kind is DirichletCalibrator else z
    true_logits = inputs @ true_w.T + true_b
    labels = sample_labels(true_logits, g)
    z32, labels = z.float().to(device), labels.to(device)
    calibrator = kind(c).fit(z32, labels, lr=1.0)
    with torch.no_grad():
        fitted = torch.softmax(calibrator(z32).double().cpu(), 1)
    # the softmax is invariant to a common shift of the outputs, so compare probabilities
    assert (fitted - torch.softmax(true_logits, 1)).abs().max() < 0.05
    assert nll(calibrator(z32), labels) <= nll(true_logits.float().to(device), labels) + 1e-3
    after_t = nll(TemperatureScaler().fit(z32, labels)(z32), labels)
    assert nll(calibrator(z32), labels) < after_t - 0.01  # more than one temperature can do


@pytest.mark.parametrize("kind", [MatrixScaler, DirichletCalibrator])
def test_identity_before_fit(kind):
    z = torch.randn(6, 3)
    with torch.no_grad():
        out = kind(3)(z)
    torch.testing.assert_close(torch.softmax(out, 1), torch.softmax(z, 1))


@pytest.mark.emulation_skip(EMULATION_FIT)
@pytest.mark.parametrize("kind", [MatrixScaler, DirichletCalibrator])
def test_odir_regularization(kind):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(400, 5, generator=g) * 3
    labels = torch.randint(0, 5, (400,), generator=g)  # noise: an unregularized fit over-fits
    free = kind(5).fit(z, labels, lr=1.0)
    strong = kind(5, off_diagonal_l2=1e4, intercept_l2=1e4).fit(z, labels, lr=1.0)
    mild = kind(5, off_diagonal_l2=1.0, intercept_l2=1.0).fit(z, labels, lr=1.0)

    def off_norm(m):
        w = m.weight.detach()
        return float((w - torch.diag(torch.diagonal(w))).norm())

    assert off_norm(strong) < 1e-2 and strong.bias.detach().abs().max() < 1e-2
    assert off_norm(strong) < off_norm(mild) < off_norm(free)
    # each fit minimizes its own objective: better there than the others' parameters
    for fitted in (free, mild, strong):
        for other in (free, mild, strong):
            probe = kind(
                5, off_diagonal_l2=fitted.off_diagonal_l2, intercept_l2=fitted.intercept_l2
            )
            probe.load_state_dict(other.state_dict())
            assert objective(fitted, z, labels) <= objective(probe, z, labels) + 1e-6


# ---------------------------------------------------------------------------------------------
# Platt scaling


@pytest.mark.emulation_skip(EMULATION_FIT)
@pytest.mark.parametrize("a_true,b_true", [(0.5, -1.0), (-1.5, 0.3)])
def test_platt_matches_logistic_regression(a_true, b_true):
    linear_model = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5000, generator=g, dtype=torch.float64) * 2
    labels = torch.bernoulli(torch.sigmoid(a_true * z + b_true), generator=g)
    scaler = PlattScaler().fit(z.float(), labels, lr=1.0)
    model = linear_model.LogisticRegression(C=1e12, tol=1e-12, max_iter=10000)
    model.fit(z.numpy()[:, None], labels.numpy())
    assert scaler.a.item() == pytest.approx(float(model.coef_[0, 0]), abs=2e-3)
    assert scaler.b.item() == pytest.approx(float(model.intercept_[0]), abs=2e-3)
    assert scaler.a.item() == pytest.approx(a_true, abs=0.15)


@pytest.mark.emulation_skip(EMULATION_FIT)
def test_platt_smoothed_targets_match_sklearn():
    calibration = pytest.importorskip("sklearn.calibration")
    sigmoid_fit = getattr(calibration, "_sigmoid_calibration", None)
    if sigmoid_fit is None:
        pytest.skip("this scikit-learn has no _sigmoid_calibration")
    g = torch.Generator().manual_seed(8)
    z = torch.randn(3000, generator=g, dtype=torch.float64) * 3
    labels = torch.bernoulli(torch.sigmoid(0.4 * z + 0.2), generator=g)
    a, b = sigmoid_fit(z.numpy(), labels.numpy())  # P = 1 / (1 + exp(a f + b))
    scaler = PlattScaler(smooth_targets=True).fit(z, labels, lr=1.0)
    assert scaler.a.item() == pytest.approx(-a, abs=2e-3)
    assert scaler.b.item() == pytest.approx(-b, abs=2e-3)


def test_platt_rejects_multiclass():
    with pytest.raises(ValueError, match="binary"):
        PlattScaler().fit(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# Histogram binning


def histogram_reference(p_fit, y_fit, p_new, n_bins):
    out = []
    for q in p_new.tolist():
        k = min(max(math.ceil(q * n_bins) - 1, 0), n_bins - 1)  # (k / n, (k + 1) / n], 0 in bin 0
        in_bin = [
            y
            for p, y in zip(p_fit.tolist(), y_fit.tolist(), strict=True)
            if min(max(math.ceil(p * n_bins) - 1, 0), n_bins - 1) == k
        ]
        out.append(sum(in_bin) / len(in_bin) if in_bin else q)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_histogram_binning_matches_reference(device, n_bins):
    g = torch.Generator().manual_seed(n_bins)
    z = torch.randn(300, generator=g, dtype=torch.float64) * 3
    labels = torch.bernoulli(torch.sigmoid(z / 2), generator=g)
    z_new = torch.cat([torch.randn(50, generator=g, dtype=torch.float64) * 4, z[:5]])
    calibrator = HistogramBinning(n_bins).fit(z.to(device), labels.to(device))
    ours = calibrator(z_new.to(device))
    expected = histogram_reference(torch.sigmoid(z), labels, torch.sigmoid(z_new), n_bins)
    assert ours.dtype == torch.float64 and ours.device.type == device
    torch.testing.assert_close(ours.cpu(), expected, rtol=1e-12, atol=1e-14)


def test_histogram_binning_adaptive_bins_have_equal_mass():
    p = torch.rand(1000, dtype=torch.float64) ** 3  # skewed: equal-width bins would be uneven
    labels = torch.bernoulli(p)
    calibrator = HistogramBinning(8, "adaptive", from_logits=False).fit(p, labels)
    index = torch.bucketize(p, calibrator.edges, right=False)
    counts = torch.bincount(index, minlength=8)
    assert counts.tolist() == [125] * 8
    for k in range(8):
        expected = labels[index == k].mean()
        assert calibrator.frequency[k].item() == pytest.approx(expected.item(), rel=1e-12)
    # state_dict round trip
    restored = HistogramBinning(8, "adaptive", from_logits=False)
    restored.load_state_dict(calibrator.state_dict())
    assert torch.equal(restored(p), calibrator(p))


# ---------------------------------------------------------------------------------------------
# Isotonic regression


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_isotonic_matches_sklearn(device, ties):
    isotonic = pytest.importorskip("sklearn.isotonic")
    g = torch.Generator().manual_seed(4)
    p = torch.rand(500, generator=g, dtype=torch.float64)
    if ties:
        p = (p * 20).round() / 20  # many samples share a probability
    labels = torch.bernoulli(p**2, generator=g)
    reference = isotonic.IsotonicRegression(out_of_bounds="clip").fit(p.numpy(), labels.numpy())
    ours = IsotonicRegression(from_logits=False).fit(p.to(device), labels.to(device))
    # new points: inside, between thresholds, below and above the fitted range, on thresholds
    p_new = torch.cat(
        [torch.rand(200, generator=g, dtype=torch.float64), torch.tensor([-0.0, 1.0]), p[:20]]
    )
    expected = torch.from_numpy(reference.predict(p_new.numpy()))
    torch.testing.assert_close(ours(p_new.to(device)).cpu(), expected, rtol=1e-12, atol=1e-14)
    assert bool((ours.y_thresholds.diff() >= 0).all())


def test_isotonic_from_logits_and_pav():
    isotonic = pytest.importorskip("sklearn.isotonic")
    g = torch.Generator().manual_seed(9)
    z = torch.randn(400, generator=g) * 2
    labels = torch.randint(0, 2, (400,), generator=g)
    ours = IsotonicRegression().fit(z, labels)
    p = torch.sigmoid(z.float()).double()
    reference = isotonic.IsotonicRegression(out_of_bounds="clip").fit(p.numpy(), labels.numpy())
    expected = torch.from_numpy(reference.predict(p.numpy())).float()
    torch.testing.assert_close(ours(z), expected, rtol=1e-6, atol=1e-7)
    # pool-adjacent-violators by hand: 1, 1, 0 -> 1, .5, .5 -> 2/3 x 3; then 0 -> .5 x 4; then 1
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    fit = IsotonicRegression(from_logits=False).fit(x, torch.tensor([1, 1, 0, 0, 1]))
    expected = torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(fit.y_thresholds, expected, rtol=0, atol=1e-15)


def test_isotonic_state_dict_and_unfitted():
    with pytest.raises(RuntimeError, match="fit"):
        IsotonicRegression()(torch.randn(3))
    fitted = IsotonicRegression(from_logits=False).fit(
        torch.tensor([0.1, 0.6, 0.9], dtype=torch.float64), torch.tensor([0, 1, 1])
    )
    restored = IsotonicRegression(from_logits=False)
    restored.load_state_dict(fitted.state_dict())
    x = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    assert torch.equal(restored(x), fitted(x))
    one = IsotonicRegression(from_logits=False).fit(
        torch.tensor([0.4, 0.4], dtype=torch.float64), torch.tensor([0, 1])
    )
    assert one(torch.tensor([0.1, 0.9], dtype=torch.float64)).tolist() == [0.5, 0.5]


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: MatrixScaler(1), ValueError, "num_classes"),
        (lambda: DirichletCalibrator(3, off_diagonal_l2=-1.0), ValueError, "off_diagonal_l2"),
        (lambda: MatrixScaler(3, intercept_l2=float("nan")), ValueError, "intercept_l2"),
        (
            lambda: MatrixScaler(3).fit(torch.randn(4, 5), torch.zeros(4, dtype=torch.long)),
            ValueError,
            "num_classes",
        ),
        (
            lambda: DirichletCalibrator(3).fit(torch.randn(4), torch.zeros(4, dtype=torch.long)),
            ValueError,
            "num_classes",
        ),
        (lambda: MatrixScaler(3)(torch.randn(4, 5)), ValueError, "logits"),
        (lambda: PlattScaler(smooth_targets=1), TypeError, "smooth_targets"),
        (lambda: HistogramBinning(0), ValueError, "n_bins"),
        (lambda: HistogramBinning(5, "quantile"), ValueError, "binning"),
        (
            lambda: HistogramBinning().fit(torch.randn(4, 2), torch.zeros(4, dtype=torch.long)),
            ValueError,
            "binary",
        ),
        (lambda: HistogramBinning()(torch.randn(4, 2)), ValueError, "binary"),
        (
            lambda: IsotonicRegression().fit(torch.randn(4), torch.tensor([0, 1, 2, 0])),
            ValueError,
            "labels",
        ),
        (
            lambda: IsotonicRegression(from_logits=False).fit(
                torch.tensor([0.5, 1.5]), torch.tensor([0, 1])
            ),
            ValueError,
            "from_logits",
        ),
        (lambda: HistogramBinning()(torch.tensor([float("nan")])), ValueError, "NaN"),
    ],
)
def test_bad_arguments_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()
