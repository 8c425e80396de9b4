"""Calibration metrics beyond top-label equal-width ECE: the fused calibration_row_stats op
against a float64 oracle (dtypes, odd vocabularies, -inf / huge / NaN logits, ties, strides),
adaptive bins, classwise ECE, ACE, the Brier score and its decomposition, NLL and
calibration_curve, against tests/reference.py, torchmetrics and scikit-learn where they define
the same quantity; the stateful metrics against the functions on the concatenated batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, DTYPES, EMULATION, TOLERANCES
from reference import (
    adaptive_bin_masks,
    binned_calibration_error_reference,
    brier_decomposition_reference,
    calibration_probabilities_reference,
    top_label_reference,
    uniform_bin_masks,
)

from logitops.calibration import (
    AdaptiveCalibrationError,
    BrierDecomposition,
    BrierScore,
    CalibrationError,
    NegativeLogLikelihood,
    adaptive_calibration_error,
    brier_score,
    calibration_curve,
    calibration_error,
    negative_log_likelihood,
)
from logitops.ops.calibration import calibration_row_stats

NORMS = ["l1", "max", "l2"]


def random_inputs(n, num_classes, dtype=torch.float64, device="cpu", scale=3.0, seed=0):
    """Logits and labels correlated with them (accuracy varies across bins)."""
    g = torch.Generator().manual_seed(seed)
    if num_classes == 1:
        logits = torch.randn(n, generator=g, dtype=torch.float64) * scale
        labels = torch.bernoulli(torch.sigmoid(logits / 2), generator=g).long()
    else:
        logits = torch.randn(n, num_classes, generator=g, dtype=torch.float64) * scale
        labels = torch.where(
            torch.rand(n, generator=g) < 0.6,
            logits.argmax(1),
            torch.randint(0, num_classes, (n,), generator=g),
        )
    return logits.to(dtype).to(device), labels.to(device)


def row_stats_reference(logits, labels):
    """Per row in float64 from the accumulation-dtype logits: confidence, prediction, nll,
    brier."""
    x = (logits if logits.dtype == torch.float64 else logits.float()).double().cpu()
    labels = labels.cpu()
    log_p = torch.log_softmax(x, dim=1)
    p = log_p.exp()
    confidence, prediction = p.max(dim=1)
    nll = -log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
    one_hot = F.one_hot(labels, x.shape[1]).double()
    brier = ((p - one_hot) ** 2).sum(1)
    return confidence, prediction, nll, brier


# ---------------------------------------------------------------------------------------------
# The fused op


OP_SHAPES = [(1, 1), (3, 2), (3, 7), (64, 10), (5, 1000), (2, 32000)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", OP_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_row_stats_match_reference(device, dtype, shape):
    rows, classes = shape
    g = torch.Generator().manual_seed(rows * classes)
    logits = (4 * torch.randn(rows, classes, generator=g, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, classes, (rows,), generator=g)
    stats, prediction = calibration_row_stats(logits.to(device), labels.to(device))
    assert stats.shape == (3, rows) and stats.dtype == torch.float64
    assert prediction.shape == (rows,) and prediction.dtype == torch.int64
    confidence, expected_prediction, nll, brier = row_stats_reference(logits, labels)
    rtol, atol = TOLERANCES[torch.float64 if dtype == torch.float64 else torch.float32]
    torch.testing.assert_close(stats[0].cpu(), confidence, rtol=rtol, atol=atol)
    torch.testing.assert_close(stats[1].cpu(), nll, rtol=rtol, atol=atol)
    torch.testing.assert_close(stats[2].cpu(), brier, rtol=rtol, atol=atol)
    assert torch.equal(prediction.cpu(), expected_prediction)


@pytest.mark.parametrize("device", DEVICES)
def test_row_stats_large_vocabulary(device):
    # 131072 classes: the regime the fused pass is for (one read per row, no softmax copy).
    rows, classes = (2, 131072) if EMULATION else (4, 131072)
    logits, labels = random_inputs(rows, classes, dtype=torch.float32, scale=5.0)
    stats, prediction = calibration_row_stats(logits.to(device), labels.to(device))
    confidence, expected_prediction, nll, brier = row_stats_reference(logits, labels)
    for ours, expected in zip(stats.cpu(), (confidence, nll, brier), strict=True):
        torch.testing.assert_close(ours, expected, rtol=2e-5, atol=2e-6)
    assert torch.equal(prediction.cpu(), expected_prediction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_stats_confident_rows_keep_relative_precision(device, dtype):
    # p_y close to 1: brier ~ 1e-12 relative to 1. Formed from the other classes' sums it keeps
    # its relative precision, where 1 - 2 p_y + sum p^2 would be pure rounding noise.
    logits = torch.zeros(3, 50, dtype=torch.float64)
    logits[:, 0] = torch.tensor([15.0, 20.0, 30.0])
    labels = torch.zeros(3, dtype=torch.long)
    stats, _ = calibration_row_stats(logits.to(dtype).to(device), labels.to(device))
    # The oracle from the log-probabilities, with 1 - p_y summed over the other classes (p_y
    # itself rounds to 1 in float64 here).
    p_other = torch.log_softmax(logits, dim=1)[:, 1:].exp()
    brier = p_other.sum(1) ** 2 + (p_other**2).sum(1)
    # -log p_0 = log(sum_j exp(z_j - z_0)) = log1p(sum_{j != 0} exp(z_j - z_0))
    nll = torch.log1p((logits[:, 1:] - logits[:, :1]).exp().sum(1))
    assert (brier < 1e-9).all() and (nll < 1e-4).all()  # the regime of the check
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(stats[2].cpu(), brier, rtol=rtol, atol=0)
    torch.testing.assert_close(stats[1].cpu(), nll, rtol=rtol, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_row_stats_non_finite_and_ties(device, dtype):
    inf, nan = float("inf"), float("nan")
    logits = torch.tensor(
        [
            [1.0, 3.0, 3.0, -inf],  # tie: first maximum; -inf class has probability 0
            [-inf, -inf, 2.0, -inf],  # one finite logit: confidence 1
            [-inf, -inf, -inf, -inf],  # softmax undefined: NaN, prediction 0
            [0.0, nan, 1.0, 2.0],  # NaN: NaN, prediction -1
            [0.0, inf, 1.0, 2.0],  # +inf: NaN, prediction -1
            [1e4, -1e4, 0.0, 1e4],  # huge: two tied maxima
            [0.0, 0.0, 0.0, 0.0],  # uniform
        ],
        dtype=dtype,
    )
    labels = torch.tensor([3, 2, 0, 1, 1, 0, 3])
    stats, prediction = calibration_row_stats(logits.to(device), labels.to(device))
    stats, prediction = stats.cpu(), prediction.cpu()
    assert prediction.tolist() == [1, 2, 0, -1, -1, 0, 0]
    confidence, nll, brier = stats
    assert confidence[0].item() == pytest.approx(0.5 / (0.5 + 0.5 + math.exp(-2) / 2), rel=1e-2)
    assert nll[0].item() == inf  # the label's class has probability 0
    assert brier[0].item() == pytest.approx(
        float((F.softmax(logits[0].double(), 0) ** 2).sum()) + 1, rel=1e-2
    )
    assert confidence[1].item() == 1.0 and nll[1].item() == 0.0 and brier[1].item() == 0.0
    assert torch.isnan(stats[:, 2:5]).all()
    assert confidence[5].item() == 0.5 and nll[5].item() == pytest.approx(math.log(2), rel=1e-2)
    assert confidence[6].item() == 0.25 and nll[6].item() == pytest.approx(math.log(4), rel=1e-2)
    assert brier[6].item() == pytest.approx(0.75, rel=1e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_row_stats_out_of_range_label_and_strides(device):
    logits = torch.randn(4, 14, dtype=torch.float64)[:, ::2]  # row stride 14, column stride 2
    labels = torch.tensor([0, 7, -1, 6])
    stats, prediction = calibration_row_stats(logits.to(device), labels.to(device))
    stats = stats.cpu()
    assert torch.isnan(stats[1:, 1:3]).all() and not torch.isnan(stats[1:, [0, 3]]).any()
    confidence, expected_prediction, _, _ = row_stats_reference(logits, labels.clamp(0, 6))
    torch.testing.assert_close(stats[0], confidence, rtol=1e-12, atol=0)
    assert torch.equal(prediction.cpu(), expected_prediction)
    sliced = torch.randn(8, 9, dtype=torch.float32)[::2, 1:]  # non-unit row stride, unit columns
    labels = torch.randint(0, 8, (4,))
    stats, _ = calibration_row_stats(sliced.to(device), labels.to(device))
    expected = calibration_row_stats(sliced.contiguous().to(device), labels.to(device))[0]
    # the same values; the CUDA kernel's vector loads split a row by its alignment, so the
    # summation order (the last bits) may differ
    torch.testing.assert_close(stats, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "logits, labels, error, match",
    [
        (torch.randn(3), torch.zeros(3, dtype=torch.long), ValueError, "2-D"),
        (torch.randn(3, 0), torch.zeros(3, dtype=torch.long), ValueError, "at least one class"),
        (torch.randint(0, 3, (3, 4)), torch.zeros(3, dtype=torch.long), TypeError, "floating"),
        (torch.randn(3, 4), torch.zeros(3, dtype=torch.int32), TypeError, "int64"),
        (torch.randn(3, 4), torch.zeros(4, dtype=torch.long), ValueError, "shape"),
    ],
)
def test_row_stats_bad_inputs(logits, labels, error, match):
    with pytest.raises(error, match=match):
        calibration_row_stats(logits, labels)


def test_row_stats_under_compile():
    logits, labels = random_inputs(16, 9, dtype=torch.float32)

    def f(x, y):
        stats, prediction = calibration_row_stats(x, y)
        return stats[0].mean(), (prediction == y).sum()

    compiled = torch.compile(f, fullgraph=True)
    for ours, expected in zip(compiled(logits, labels), f(logits, labels), strict=True):
        assert torch.equal(ours, expected)


# ---------------------------------------------------------------------------------------------
# Calibration errors: adaptive bins, classwise, ACE


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_bins", [1, 7, 15])
@pytest.mark.parametrize("num_classes", [1, 2, 10], ids=["binary", "C2", "C10"])
def test_adaptive_bins_match_reference(device, norm, n_bins, num_classes):
    logits, labels = random_inputs(1003, num_classes, device=device)
    ours = calibration_error(logits, labels, n_bins=n_bins, norm=norm, binning="adaptive")
    confidence, correct = top_label_reference(logits.cpu(), labels.cpu())
    masks = adaptive_bin_masks(confidence, n_bins)
    sizes = sorted(int(m.sum()) for m in masks)
    assert sizes[-1] - sizes[0] <= 1  # equal mass
    expected = binned_calibration_error_reference(confidence, correct, masks, norm)
    assert ours.dtype == torch.float64 and ours.device == logits.device
    torch.testing.assert_close(ours.cpu(), expected, rtol=1e-12, atol=1e-14)


def test_adaptive_bins_with_ties_and_few_samples():
    # Ties are split by input order (stable sort); fewer samples than bins leaves bins empty.
    probs = torch.tensor([[0.7, 0.3]] * 4 + [[0.2, 0.8]] * 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0, 1, 0])
    confidence, correct = top_label_reference(probs, labels, from_logits=False)
    for n_bins in (2, 3, 10):
        masks = adaptive_bin_masks(confidence, n_bins)
        for norm in NORMS:
            expected = binned_calibration_error_reference(confidence, correct, masks, norm)
            ours = calibration_error(
                probs, labels, n_bins=n_bins, norm=norm, binning="adaptive", from_logits=False
            )
            torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)


def classwise_reference(logits, labels, n_bins, norm, binning="uniform", from_logits=True):
    probs = calibration_probabilities_reference(logits.cpu(), from_logits)
    labels = labels.cpu().long()
    errors = []
    for c in range(probs.shape[1]):
        p, hit = probs[:, c], labels == c
        masks = (
            uniform_bin_masks(p, n_bins) if binning == "uniform" else adaptive_bin_masks(p, n_bins)
        )
        errors.append(binned_calibration_error_reference(p, hit, masks, norm))
    return torch.stack(errors).mean()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("binning", ["uniform", "adaptive"])
@pytest.mark.parametrize("num_classes", [1, 3, 10], ids=["binary", "C3", "C10"])
def test_classwise_matches_reference(device, norm, binning, num_classes):
    logits, labels = random_inputs(600, num_classes, device=device)
    ours = calibration_error(logits, labels, n_bins=10, norm=norm, binning=binning, classwise=True)
    expected = classwise_reference(logits, labels, 10, norm, binning)
    torch.testing.assert_close(ours.cpu(), expected, rtol=1e-12, atol=1e-14)


def test_classwise_chunks_of_rows(monkeypatch):
    # The classwise pass computes the softmax in chunks of rows: chunk boundaries change nothing.
    import logitops.calibration as calibration

    logits, labels = random_inputs(257, 13)
    whole = calibration_error(logits, labels, classwise=True)
    monkeypatch.setattr(calibration, "_CHUNK_ELEMENTS", 13 * 10)
    assert calibration_error(logits, labels, classwise=True).item() == pytest.approx(
        whole.item(), rel=1e-13
    )


def ace_reference(logits, labels, n_bins, from_logits=True):
    probs = calibration_probabilities_reference(logits.cpu(), from_logits)
    gaps = []
    for c in range(probs.shape[1]):
        p, hit = probs[:, c], (labels.cpu() == c).double()
        for mask in adaptive_bin_masks(p, n_bins):
            if mask.any():
                gaps.append((hit[mask].mean() - p[mask].mean()).abs())
    return torch.stack(gaps).mean()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "num_classes,n", [(1, 300), (4, 500), (10, 7)], ids=["binary", "C4", "N<bins"]
)
def test_ace_matches_reference(device, num_classes, n):
    logits, labels = random_inputs(n, num_classes, device=device)
    ours = adaptive_calibration_error(logits, labels, n_bins=15)
    torch.testing.assert_close(
        ours.cpu(), ace_reference(logits, labels, 15), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_bins", [5, 15])
@pytest.mark.parametrize("num_classes", [3, 10])
def test_top_label_matches_torchmetrics(norm, n_bins, num_classes):
    tm = pytest.importorskip("torchmetrics.classification")
    logits, labels = random_inputs(2000, num_classes, dtype=torch.float32)
    metric = tm.MulticlassCalibrationError(num_classes=num_classes, n_bins=n_bins, norm=norm)
    expected = metric(logits.softmax(1), labels)
    ours = calibration_error(logits, labels, n_bins=n_bins, norm=norm)
    # Same bins except for a confidence exactly on an inner edge (torchmetrics closes bins on the
    # left); random confidences do not lie there. torchmetrics sums in float32.
    torch.testing.assert_close(ours, expected.to(ours.dtype), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Brier score, its decomposition, NLL


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classes", [1, 2, 7], ids=["binary", "C2", "C7"])
def test_brier_and_nll_match_reference(device, dtype, num_classes):
    logits, labels = random_inputs(500, num_classes, dtype=dtype, device=device)
    probs = calibration_probabilities_reference(logits.cpu())
    y = labels.cpu().long()
    if num_classes == 1:
        expected_brier = ((probs[:, 1] - y) ** 2).mean()
        x = logits.cpu().double() if dtype == torch.float64 else logits.cpu().float().double()
        expected_nll = F.binary_cross_entropy_with_logits(x, y.double())
    else:
        expected_brier = ((probs - F.one_hot(y, num_classes)) ** 2).sum(1).mean()
        expected_nll = -probs.log().gather(1, y.unsqueeze(1)).mean()
    rtol, atol = TOLERANCES[torch.float64 if dtype == torch.float64 else torch.float32]
    out = torch.float64 if dtype == torch.float64 else torch.float32
    for name, ours, expected in (
        ("brier", brier_score(logits, labels), expected_brier),
        ("nll", negative_log_likelihood(logits, labels), expected_nll),
    ):
        assert ours.dtype == out and ours.device == logits.device, name
        torch.testing.assert_close(ours.double().cpu(), expected, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("num_classes", [1, 5], ids=["binary", "C5"])
def test_from_probabilities_matches_from_logits(num_classes):
    logits, labels = random_inputs(400, num_classes)
    probs = torch.sigmoid(logits) if num_classes == 1 else torch.softmax(logits, 1)
    pairs = [
        (brier_score(probs, labels, from_logits=False), brier_score(logits, labels)),
        (
            negative_log_likelihood(probs, labels, from_logits=False),
            negative_log_likelihood(logits, labels),
        ),
        (
            adaptive_calibration_error(probs, labels, from_logits=False),
            adaptive_calibration_error(logits, labels),
        ),
        (
            calibration_error(probs, labels, classwise=True, from_logits=False),
            calibration_error(logits, labels, classwise=True),
        ),
    ]
    for ours, expected in pairs:
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_brier_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    z, y = random_inputs(1000, 1)
    expected = metrics.brier_score_loss(y.numpy(), torch.sigmoid(z).numpy())
    assert brier_score(z, y).item() == pytest.approx(expected, rel=1e-12)
    logits, labels = random_inputs(1000, 6)
    probs = torch.softmax(logits, 1)
    # scikit-learn's multi-class score is the unscaled sum over classes (range [0, 2])
    expected = metrics.brier_score_loss(labels.numpy(), probs.numpy(), labels=list(range(6)))
    assert brier_score(logits, labels).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_bins", [1, 10])
@pytest.mark.parametrize("num_classes", [1, 4], ids=["binary", "C4"])
def test_brier_decomposition_matches_reference(device, n_bins, num_classes):
    logits, labels = random_inputs(800, num_classes, device=device)
    d = brier_score(logits, labels, decompose=True, n_bins=n_bins)
    assert isinstance(d, BrierDecomposition)
    probs = calibration_probabilities_reference(logits.cpu())
    ref_labels = labels.cpu().long()
    if num_classes == 1:  # the positive class alone: column 0 is p, label 1 its class
        probs, ref_labels = probs[:, 1:], ref_labels - 1
    ref = brier_decomposition_reference(probs, ref_labels, n_bins)
    for field, key in (
        ("reliability", "reliability"),
        ("resolution", "resolution"),
        ("uncertainty", "uncertainty"),
        ("within_bin_variance", "variance"),
        ("within_bin_covariance", "covariance"),
    ):
        assert getattr(d, field).item() == pytest.approx(ref[key], rel=1e-10, abs=1e-13), field
    # the exact identity, and the score is brier_score's
    total = d.reliability - d.resolution + d.uncertainty
    total = total + d.within_bin_variance - 2 * d.within_bin_covariance
    torch.testing.assert_close(total, d.score, rtol=1e-12, atol=1e-14)
    assert torch.equal(d.score, brier_score(logits, labels))


def test_brier_decomposition_of_discrete_forecasts():
    # Forecasts from a finite set, one value per bin: the within-bin terms vanish and Murphy's
    # three terms add up to the score (binary, the classic case).
    p = torch.tensor([0.1, 0.1, 0.1, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1, 1, 0])
    d = brier_score(p, y, decompose=True, n_bins=10, from_logits=False)
    assert d.within_bin_variance.item() == pytest.approx(0, abs=1e-16)
    assert d.within_bin_covariance.item() == pytest.approx(0, abs=1e-16)
    freq = {0.1: 1 / 3, 0.5: 1 / 2, 0.9: 4 / 5}
    counts = {0.1: 3, 0.5: 2, 0.9: 5}
    base = 0.6
    rel = sum(counts[f] * (f - freq[f]) ** 2 for f in freq) / 10
    res = sum(counts[f] * (freq[f] - base) ** 2 for f in freq) / 10
    assert d.reliability.item() == pytest.approx(rel, rel=1e-12)
    assert d.resolution.item() == pytest.approx(res, rel=1e-12)
    assert d.uncertainty.item() == pytest.approx(base * (1 - base), rel=1e-12)
    assert d.score.item() == pytest.approx(rel - res + base * (1 - base), rel=1e-12)


def test_nll_of_probabilities_zero_is_inf():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    assert (
        negative_log_likelihood(probs, torch.tensor([1, 0]), from_logits=False).item() == math.inf
    )


# ---------------------------------------------------------------------------------------------
# calibration_curve


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [3, 5, 10])
def test_calibration_curve_matches_sklearn(strategy, n_bins):
    calibration = pytest.importorskip("sklearn.calibration")
    # 998 samples: (998 - 1) * k / n_bins is never an integer, so no quantile edge falls on a
    # sample, where numpy's and torch's interpolation may round the edge to either side of it.
    z, y = random_inputs(998, 1)
    p = torch.sigmoid(z)
    prob_true, prob_pred = calibration.calibration_curve(
        y.numpy(), p.numpy(), n_bins=n_bins, strategy=strategy
    )
    ours_true, ours_pred = calibration_curve(z, y, n_bins=n_bins, binning=strategy)
    torch.testing.assert_close(ours_true, torch.from_numpy(prob_true), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_pred, torch.from_numpy(prob_pred), rtol=1e-12, atol=1e-14)
    # also on probabilities, with an empty bin and values on the edges
    q = torch.tensor([0.0, 0.2, 0.2, 0.4, 0.95, 1.0], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    prob_true, prob_pred = calibration.calibration_curve(
        labels.numpy(), q.numpy(), n_bins=n_bins, strategy=strategy
    )
    ours_true, ours_pred = calibration_curve(
        q, labels, n_bins=n_bins, binning=strategy, from_logits=False
    )
    torch.testing.assert_close(ours_true, torch.from_numpy(prob_true), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_pred, torch.from_numpy(prob_pred), rtol=1e-12, atol=1e-14)


def test_calibration_curve_multiclass_and_adaptive():
    logits, labels = random_inputs(900, 5)
    confidence, correct = top_label_reference(logits, labels)
    for binning, masks in (
        ("uniform", uniform_bin_masks(confidence, 8)),
        ("adaptive", adaptive_bin_masks(confidence, 8)),
    ):
        true, pred = calibration_curve(logits, labels, n_bins=8, binning=binning)
        kept = [m for m in masks if m.any()]
        torch.testing.assert_close(true, torch.stack([correct[m].double().mean() for m in kept]))
        torch.testing.assert_close(pred, torch.stack([confidence[m].mean() for m in kept]))


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, y: calibration_error(x, y, binning="quantile"), ValueError, "binning"),
        (lambda x, y: calibration_error(x, y, norm="L1"), ValueError, "norm"),
        (lambda x, y: adaptive_calibration_error(x, y, n_bins=0), ValueError, "n_bins"),
        (lambda x, y: brier_score(x, y, decompose=True, n_bins=-1), ValueError, "n_bins"),
        (lambda x, y: calibration_curve(x, y, binning="equal"), ValueError, "binning"),
        (lambda x, y: brier_score(x[:, :1], y), ValueError, "C >= 2"),
        (lambda x, y: negative_log_likelihood(x, y + 4), ValueError, "labels"),
        (lambda x, y: negative_log_likelihood(x.int(), y), TypeError, "logits"),
        (lambda x, y: brier_score(x, y, from_logits=False), ValueError, "from_logits"),
        (
            lambda x, y: calibration_error(x.clone().fill_(float("nan")), y, classwise=True),
            ValueError,
            "NaN",
        ),
        (lambda x, y: brier_score(x.clone().fill_(float("inf")), y), ValueError, "NaN or \\+inf"),
    ],
)
def test_bad_inputs_raise(call, error, match):
    logits, labels = random_inputs(8, 4)
    with pytest.raises(error, match=match):
        call(logits, labels)


# ---------------------------------------------------------------------------------------------
# Stateful metrics (one process; tests/test_calibration_distributed.py has the ranks)


def batches(num_classes, sizes=(37, 1, 64, 5), dtype=torch.float64, device="cpu"):
    return [
        random_inputs(n, num_classes, dtype=dtype, device=device, seed=i)
        for i, n in enumerate(sizes)
    ]


STATEFUL_CASES = [
    ("ece", lambda c: CalibrationError(n_bins=10), lambda x, y: calibration_error(x, y, n_bins=10)),
    (
        "mce-adaptive",
        lambda c: CalibrationError(n_bins=7, norm="max", binning="adaptive"),
        lambda x, y: calibration_error(x, y, n_bins=7, norm="max", binning="adaptive"),
    ),
    (
        "classwise",
        lambda c: CalibrationError(classwise=True, num_classes=c, norm="l2"),
        lambda x, y: calibration_error(x, y, classwise=True, norm="l2"),
    ),
    (
        "classwise-adaptive",
        lambda c: CalibrationError(binning="adaptive", classwise=True, num_classes=c),
        lambda x, y: calibration_error(x, y, binning="adaptive", classwise=True),
    ),
    (
        "ace",
        lambda c: AdaptiveCalibrationError(num_classes=c, n_bins=6),
        lambda x, y: adaptive_calibration_error(x, y, n_bins=6),
    ),
    ("brier", lambda c: BrierScore(), lambda x, y: brier_score(x, y)),
    (
        "brier-decomposed",
        lambda c: BrierScore(decompose=True, num_classes=c, n_bins=5),
        lambda x, y: brier_score(x, y, decompose=True, n_bins=5),
    ),
    ("nll", lambda c: NegativeLogLikelihood(), lambda x, y: negative_log_likelihood(x, y)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_classes", [1, 6], ids=["binary", "C6"])
@pytest.mark.parametrize("name,make,function", STATEFUL_CASES, ids=[c[0] for c in STATEFUL_CASES])
def test_stateful_equals_function_of_concatenation(device, num_classes, name, make, function):
    data = batches(num_classes, device=device)
    metric = make(num_classes)
    for logits, labels in data:
        metric.update(logits, labels)
    logits, labels = (torch.cat(t) for t in zip(*data, strict=True))
    expected = function(logits, labels)
    ours = metric.compute()
    for a, b in zip(
        ours if isinstance(ours, tuple) else (ours,),
        expected if isinstance(expected, tuple) else (expected,),
        strict=True,
    ):
        assert a.dtype == torch.float64 and a.device == logits.device
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert metric.compute() is not None  # compute leaves the states alone
    metric.reset()
    with pytest.raises(RuntimeError, match="update"):
        metric.compute()
    metric.update(*data[0])
    torch.testing.assert_close(
        metric.compute() if name != "brier-decomposed" else metric.compute().score,
        function(*data[0]) if name != "brier-decomposed" else function(*data[0]).score,
        rtol=1e-12,
        atol=1e-14,
    )


def test_stateful_dtype_is_float32_once_any_batch_is():
    metric = NegativeLogLikelihood()
    metric.update(*random_inputs(5, 3))
    assert metric.compute().dtype == torch.float64
    metric.update(*random_inputs(5, 3, dtype=torch.bfloat16))
    assert metric.compute().dtype == torch.float32


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: CalibrationError(classwise=True), ValueError, "num_classes"),
        (lambda: CalibrationError(num_classes=0), ValueError, "num_classes"),
        (lambda: CalibrationError(norm="l3"), ValueError, "norm"),
        (lambda: CalibrationError(binning="quantile"), ValueError, "binning"),
        (lambda: CalibrationError(n_bins=0), ValueError, "n_bins"),
        (lambda: BrierScore(decompose=True), ValueError, "num_classes"),
        (lambda: AdaptiveCalibrationError(num_classes=None), ValueError, "num_classes"),
        (lambda: NegativeLogLikelihood(from_logits=1), TypeError, "from_logits"),
        (
            lambda: CalibrationError(num_classes=4).update(*random_inputs(3, 5)),
            ValueError,
            "num_classes=4",
        ),
        (
            lambda: BrierScore(decompose=True, num_classes=3).update(*random_inputs(3, 1)),
            ValueError,
            "num_classes=3",
        ),
        (
            lambda: CalibrationError().update(torch.randn(3, 4), torch.zeros(2).long()),
            ValueError,
            "labels",
        ),
    ],
)
def test_stateful_bad_arguments_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_row_stats_across_blocks(device, dtype):
    # Rows longer than the CPU kernel's blocks of 1024 classes (and than a CUDA block's threads):
    # ties between blocks, a leading block of -inf, the label at the max or in a masked block.
    classes = 3001
    logits = torch.randn(5, classes, dtype=torch.float64)
    logits[0, [1500, 2500]] = 9.0  # tie across blocks: the first wins
    logits[1, :2048] = float("-inf")  # two blocks of -inf, then the rest
    logits[2, 3000] = 9.0  # the max in the last, one-element block
    logits[3, :] = float("-inf")
    logits[3, 1024] = 0.5  # one finite logit, first of its block
    logits[4, 7] = 9.0
    labels = torch.tensor([2500, 100, 3000, 1024, 7])  # row 1's label is a -inf class
    logits = logits.to(dtype)
    stats, prediction = calibration_row_stats(logits.to(device), labels.to(device))
    confidence, expected_prediction, nll, brier = row_stats_reference(logits, labels)
    assert prediction.cpu().tolist() == [1500, expected_prediction[1].item(), 3000, 1024, 7]
    assert torch.equal(prediction.cpu(), expected_prediction)
    rtol, atol = TOLERANCES[torch.float64 if dtype == torch.float64 else torch.float32]
    torch.testing.assert_close(stats[0].cpu(), confidence, rtol=rtol, atol=atol)
    torch.testing.assert_close(stats[1].cpu(), nll, rtol=rtol, atol=atol)
    torch.testing.assert_close(stats[2].cpu(), brier, rtol=rtol, atol=atol)
    assert stats[1, 1].item() == math.inf and stats[0, 3].item() == 1.0


@pytest.mark.skipif(not EMULATION, reason="counts the emulated CUDA kernel's global traffic")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_row_stats_kernel_reads_the_logits_once(dtype):
    # The fused pass reads each row once (16-byte vectors; the label's logit is a per-row scalar,
    # not counted) and writes O(rows): no softmax, no second sweep. Rows of 1000 classes start on
    # 16-byte boundaries for every dtype.
    rows, classes = 4, 1000
    logits = torch.randn(rows, classes, dtype=dtype)
    labels = torch.randint(0, classes, (rows,))
    torch.ops.logitops_emulation.start_traffic_log()
    try:
        calibration_row_stats(logits, labels)
    finally:
        log = torch.ops.logitops_emulation.stop_traffic_log()
    unit = logits.numel() * logits.element_size()
    launches = list(zip(*log, strict=True))
    assert [launch[0] for launch in launches] == ["calibration_row_stats_kernel"]
    _, read, written, distinct_read, _ = launches[0]
    assert read / unit == pytest.approx(1.0) and distinct_read / unit == pytest.approx(1.0)
    assert written / unit < 0.05
