"""Calibration: ECE / MCE / RMS against a float64 loop-over-bins oracle, bin edges, binary and
probability inputs, temperature / vector scaling fits, reliability diagrams, errors."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from conftest import DEVICES

import logitops
from logitops.calibration import (
    TemperatureScaler,
    VectorScaler,
    _bin_indices,
    calibration_error,
    confidence_histogram,
    reliability_diagram,
)

EMULATION_FIT = (
    "iterative fits (LBFGS) call the cross-entropy kernel hundreds of times on thousands of rows;"
    " the kernel itself is covered by test_cross_entropy"
)

NORMS = ["l1", "max", "l2"]


# ---------------------------------------------------------------------------------------------
# Oracle: written from the definitions, one bin at a time, in float64.


def reference_confidences(logits, labels, from_logits=True):
    """Top-1 confidence (float64) and correctness; softmax / sigmoid in the input's dtype
    (float32 for half types), as the documented semantics say."""
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if logits.dim() == 1:
        p = (torch.sigmoid(x) if from_logits else x).double()
        confidence = torch.where(p >= 0.5, p, 1 - p)
        correct = (p >= 0.5).long() == labels.long()
    else:
        probs = torch.softmax(x, dim=1) if from_logits else x
        confidence, prediction = probs.max(dim=1)
        confidence = confidence.double()
        correct = prediction == labels
    return confidence.cpu(), correct.cpu()


def reference_calibration_error(confidence, correct, n_bins, norm):
    total = confidence.numel()
    ece = torch.zeros((), dtype=torch.float64)
    mce = torch.zeros((), dtype=torch.float64)
    mse = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (confidence > lo) & (confidence <= hi)
        if b == 0:
            in_bin |= confidence == 0.0
        n = int(in_bin.sum())
        if n == 0:
            continue
        gap = (correct[in_bin].double().mean() - confidence[in_bin].mean()).abs()
        ece += n / total * gap
        mse += n / total * gap**2
        mce = torch.maximum(mce, gap)
    return {"l1": ece, "max": mce, "l2": mse.sqrt()}[norm]


def random_inputs(n, num_classes, dtype=torch.float64, device="cpu", scale=3.0):
    if num_classes == 1:  # binary
        logits = torch.randn(n, dtype=torch.float64) * scale
        labels = torch.randint(0, 2, (n,))
    else:
        logits = torch.randn(n, num_classes, dtype=torch.float64) * scale
        # labels correlated with the logits, so that accuracy varies across bins
        labels = torch.where(
            torch.rand(n) < 0.6, logits.argmax(1), torch.randint(0, num_classes, (n,))
        )
    return logits.to(dtype).to(device), labels.to(device)


def nll(logits, labels):
    with torch.no_grad():
        if logits.dim() == 1:
            return float(logitops.binary_cross_entropy_with_logits(logits, labels.double()))
        return float(logitops.cross_entropy(logits, labels))


# ---------------------------------------------------------------------------------------------
# calibration_error


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_bins", [1, 7, 15, 100])
@pytest.mark.parametrize("num_classes", [1, 2, 10], ids=["binary", "C2", "C10"])
def test_matches_reference(device, norm, n_bins, num_classes):
    logits, labels = random_inputs(3000, num_classes, device=device)
    ours = calibration_error(logits, labels, n_bins=n_bins, norm=norm)
    expected = reference_calibration_error(*reference_confidences(logits, labels), n_bins, norm)
    assert ours.shape == () and ours.dtype == torch.float64 and ours.device == logits.device
    torch.testing.assert_close(ours.cpu(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_classes", [1, 10], ids=["binary", "C10"])
def test_low_precision_inputs(dtype, num_classes):
    logits, labels = random_inputs(2000, num_classes, dtype=dtype)
    for norm in NORMS:
        ours = calibration_error(logits, labels, norm=norm)
        expected = reference_calibration_error(*reference_confidences(logits, labels), 15, norm)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours.double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("num_classes", [1, 10], ids=["binary", "C10"])
def test_from_probabilities_matches_from_logits(num_classes):
    logits, labels = random_inputs(2000, num_classes)
    probs = torch.sigmoid(logits) if num_classes == 1 else torch.softmax(logits, 1)
    for norm in NORMS:
        torch.testing.assert_close(
            calibration_error(probs, labels, norm=norm, from_logits=False),
            calibration_error(logits, labels, norm=norm),
            rtol=1e-12,
            atol=1e-14,
        )


def test_hand_computed():
    # confidences 0.9 (right), 0.6 (wrong), 0.7 (right), 0.8 (wrong); 5 bins with right-closed
    # edges 0.2, 0.4, 0.6, 0.8, 1.0: 0.6 and 0.8 lie exactly on edges and go to the lower bin.
    # bin (0.4, 0.6]: {0.6 wrong} gap 0.6; (0.6, 0.8]: {0.7 right, 0.8 wrong} gap |0.5 - 0.75|
    # = 0.25; (0.8, 1]: {0.9 right} gap 0.1.
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    kwargs = {"n_bins": 5, "from_logits": False}
    ece = calibration_error(probs, labels, norm="l1", **kwargs)
    mce = calibration_error(probs, labels, norm="max", **kwargs)
    rms = calibration_error(probs, labels, norm="l2", **kwargs)
    assert ece.item() == pytest.approx((0.6 + 2 * 0.25 + 0.1) / 4, abs=1e-15)
    assert mce.item() == pytest.approx(0.6, abs=1e-15)
    assert rms.item() == pytest.approx(math.sqrt((0.36 + 2 * 0.0625 + 0.01) / 4), abs=1e-15)
    # one bin: |accuracy - mean confidence| = |0.5 - 0.75|
    one = calibration_error(probs, labels, n_bins=1, from_logits=False)
    assert one.item() == pytest.approx(0.25, abs=1e-15)


def test_hand_computed_binary_and_logits():
    # sigmoid(log 4) = 0.8 -> predicts 1, confidence 0.8; sigmoid(-log 3) = 0.25 -> predicts 0,
    # confidence 0.75. Labels 1, 1: accuracy 1 at 0.8 and 0 at 0.75; 10 bins put 0.75 and 0.8
    # in the same bin (0.7, 0.8]: |0.5 - 0.775| = 0.275.
    logits = torch.tensor([math.log(4.0), -math.log(3.0)], dtype=torch.float64)
    labels = torch.tensor([1, 1])
    ece = calibration_error(logits, labels, n_bins=10)
    assert ece.item() == pytest.approx(0.275, abs=1e-12)
    # 20 bins separate them: (0.75 - 0 + 1 - 0.8) / 2
    ece20 = calibration_error(logits, labels, n_bins=20)
    assert ece20.item() == pytest.approx((0.75 + 0.2) / 2, abs=1e-12)


@pytest.mark.parametrize("n_bins", [1, 3, 10, 15])
def test_bin_indices_at_edges(n_bins):
    k = torch.arange(n_bins + 1, dtype=torch.float64)
    edges = k / n_bins  # 0, 1/n, ..., 1 exactly as the oracle computes them
    index = _bin_indices(edges, n_bins)
    # 0 -> first bin; edge k/n (k >= 1) closes bin k - 1; 1 -> last bin
    expected = (k.long() - 1).clamp(min=0)
    assert torch.equal(index, expected)
    assert index[0] == 0 and index[-1] == n_bins - 1
    # just above an edge opens the next bin
    above = torch.nextafter(edges[:-1], torch.tensor(2.0, dtype=torch.float64))
    assert torch.equal(_bin_indices(above, n_bins), torch.arange(n_bins))


def test_confidence_exactly_one_is_counted():
    # softmax of [100, -100] is exactly 1.0 in float64 (torchmetrics #3510: such samples went
    # missing or overflowed the last bin)
    logits = torch.tensor([[100.0, -100.0], [100.0, -100.0]], dtype=torch.float64)
    assert torch.softmax(logits, 1)[0, 0].item() == 1.0
    labels = torch.tensor([0, 1])  # accuracy 0.5 at confidence 1
    for norm in NORMS:
        assert calibration_error(logits, labels, norm=norm).item() == pytest.approx(0.5)
    # one-hot probabilities, and binary probabilities 0 and 1 (confidence 1 both)
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert calibration_error(one_hot, labels, from_logits=False).item() == 0.0
    assert calibration_error(one_hot, 1 - labels, from_logits=False).item() == 1.0
    binary = torch.tensor([0.0, 1.0])
    assert calibration_error(binary, torch.tensor([0, 1]), from_logits=False).item() == 0.0
    assert calibration_error(binary, torch.tensor([1, 1]), from_logits=False).item() == 0.5


def test_confidence_exactly_zero_is_counted():
    # all-zero probability rows have top-1 confidence 0 (torchmetrics #1646: dropped); they
    # belong to the first bin and count in the total
    probs = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2, 1])  # prediction 0 on the zero rows (first maximum)
    # first bin: confidence 0, accuracy 1/2; last bin: confidence 1, accuracy 1
    ece = calibration_error(probs, labels, from_logits=False, n_bins=4)
    assert ece.item() == pytest.approx(2 / 3 * 0.5)
    mce = calibration_error(probs, labels, from_logits=False, n_bins=4, norm="max")
    assert mce.item() == pytest.approx(0.5)


def test_binary_matches_two_class_and_label_dtypes():
    z, labels = random_inputs(3000, 1)
    two_class = torch.stack([torch.zeros_like(z), z], dim=1)  # softmax -> [1 - p, p]
    for norm in NORMS:
        expected = calibration_error(two_class, labels, norm=norm)
        for y in (labels, labels.bool(), labels.double(), labels.int()):
            torch.testing.assert_close(
                calibration_error(z, y, norm=norm), expected, rtol=1e-12, atol=1e-14
            )


def test_logit_zero_predicts_positive():
    # p = 0.5 -> prediction 1 (p >= 0.5), confidence 0.5
    z = torch.zeros(2, dtype=torch.float64)
    assert calibration_error(z, torch.tensor([1, 1]), n_bins=2).item() == pytest.approx(0.5)
    assert calibration_error(z, torch.tensor([0, 0]), n_bins=2).item() == pytest.approx(0.5)
    assert calibration_error(z, torch.tensor([0, 1]), n_bins=2).item() == 0.0


def test_input_not_modified_and_no_grad_needed():
    logits = torch.randn(50, 4, requires_grad=True)
    labels = torch.randint(0, 4, (50,))
    before = logits.detach().clone()
    ece = calibration_error(logits, labels)
    assert not ece.requires_grad
    assert torch.equal(logits.detach(), before)


@pytest.mark.parametrize(
    "kwargs, logits, labels, error, match",
    [
        ({"norm": "l3"}, torch.randn(4, 3), torch.zeros(4, dtype=torch.long), ValueError, "norm"),
        ({"n_bins": 0}, torch.randn(4, 3), torch.zeros(4, dtype=torch.long), ValueError, "n_bins"),
        (
            {"n_bins": 2.0},
            torch.randn(4, 3),
            torch.zeros(4, dtype=torch.long),
            ValueError,
            "n_bins",
        ),
        ({}, torch.randn(4, 3), torch.zeros(5, dtype=torch.long), ValueError, "labels"),
        ({}, torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.long), ValueError, "labels"),
        ({}, torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), ValueError, "labels"),
        ({}, torch.randn(4, 3), torch.tensor([0, 1, -1, 2]), ValueError, "labels"),
        ({}, torch.randn(4), torch.tensor([0, 1, 2, 1]), ValueError, "labels"),
        ({}, torch.randn(4), torch.tensor([0.0, 1.0, 0.5, 1.0]), ValueError, "labels"),
        ({}, torch.randn(4, 3), torch.zeros(4), TypeError, "labels"),
        ({}, torch.randn(4, 3), [0, 1, 2, 0], TypeError, "labels"),
        ({}, torch.randint(0, 5, (4, 3)), torch.zeros(4, dtype=torch.long), TypeError, "logits"),
        ({}, torch.randn(4, 3, 2), torch.zeros(4, dtype=torch.long), ValueError, "logits"),
        ({}, torch.randn(4, 1), torch.zeros(4, dtype=torch.long), ValueError, "logits"),
        ({}, torch.randn(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "logits"),
        ({}, torch.tensor([[0.0, float("nan")]]), torch.tensor([0]), ValueError, "NaN"),
        (
            {"from_logits": False},
            torch.tensor([[1.5, -0.5]]),
            torch.tensor([0]),
            ValueError,
            "from_logits",
        ),
    ],
)
def test_bad_inputs_raise(kwargs, logits, labels, error, match):
    with pytest.raises(error, match=match):
        calibration_error(logits, labels, **kwargs)


# ---------------------------------------------------------------------------------------------
# Scalers


def sample_labels(logits, temperature, generator):
    if logits.dim() == 1:
        return torch.bernoulli(torch.sigmoid(logits / temperature), generator=generator).long()
    probs = torch.softmax(logits / temperature, dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@pytest.mark.emulation_skip(EMULATION_FIT)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t_true", [0.5, 2.5])
@pytest.mark.parametrize("binary", [False, True], ids=["C10", "binary"])
def test_temperature_recovered(device, t_true, binary):
    generator = torch.Generator().manual_seed(1234)
    shape = (20000,) if binary else (20000, 10)
    z = torch.randn(shape, generator=generator) * 3
    labels = sample_labels(z.double(), t_true, generator)
    z, labels = z.to(device), labels.to(device)
    scaler = TemperatureScaler().fit(z, labels)
    assert abs(scaler.temperature - t_true) / t_true < 0.05
    assert nll(scaler(z), labels) <= nll(z, labels)


@pytest.mark.emulation_skip(EMULATION_FIT)
@pytest.mark.parametrize("init", [1e-4, 0.02, 50.0, 1e4])
def test_temperature_stays_positive_from_far_away(init):
    generator = torch.Generator().manual_seed(7)
    z = torch.randn(5000, 10, generator=generator) * 3
    labels = sample_labels(z.double(), 2.0, generator)
    scaler = TemperatureScaler(init_temperature=init).fit(z, labels)
    assert math.isfinite(scaler.temperature) and scaler.temperature > 0
    assert nll(scaler(z), labels) <= nll(z / init, labels)
    if 1e-2 <= init <= 1e2:  # from a moderately bad start it still finds the optimum
        assert abs(scaler.temperature - 2.0) / 2.0 < 0.05


@pytest.mark.emulation_skip(EMULATION_FIT)
def test_fit_leaves_caller_alone():
    model = torch.nn.Linear(6, 4)
    x = torch.randn(300, 6)
    logits = model(x) * 5  # non-leaf, attached to the model's graph
    leaf = torch.randn(300, 4, requires_grad=True)
    labels = torch.randint(0, 4, (300,))
    snapshots = (logits.detach().clone(), leaf.detach().clone(), labels.clone())
    for training in (True, False):
        scaler = TemperatureScaler().train(training)
        scaler.fit(logits, labels)
        scaler.fit(leaf, labels)
        assert scaler.training is training
        assert scaler.log_temperature.grad is None
    assert torch.equal(logits.detach(), snapshots[0]) and torch.equal(leaf.detach(), snapshots[1])
    assert torch.equal(labels, snapshots[2])
    assert leaf.grad is None and model.weight.grad is None and model.bias.grad is None


@pytest.mark.emulation_skip(EMULATION_FIT)
def test_fit_under_no_grad_and_inference_mode():
    z = torch.randn(2000, 5) * 4
    labels = torch.randint(0, 5, (2000,))  # random labels: over-confident logits, T > 1
    with torch.no_grad():
        t1 = TemperatureScaler().fit(z, labels).temperature
        assert not torch.is_grad_enabled()
    outside = TemperatureScaler()
    with torch.inference_mode():
        zi, li = z.clone(), labels.clone()  # inference tensors
        t2 = outside.fit(zi, li).temperature
        t3 = TemperatureScaler().fit(zi, li).temperature  # parameters are inference tensors
        assert torch.is_inference_mode_enabled()
    assert t1 > 2.0 and t1 == pytest.approx(t2, rel=1e-6) and t1 == pytest.approx(t3, rel=1e-6)


def test_forward_dtype_and_argmax():
    scaler = TemperatureScaler(init_temperature=2.0)
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        z = torch.randn(8, 5).to(dtype)
        with torch.no_grad():
            out = scaler(z)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), (z.float() / 2.0).to(dtype).double())
        assert torch.equal(out.argmax(1), z.argmax(1))
    assert list(scaler.state_dict()) == ["log_temperature"]
    restored = TemperatureScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.temperature == pytest.approx(2.0)


@pytest.mark.emulation_skip(EMULATION_FIT)
def test_vector_scaling_reduces_nll():
    generator = torch.Generator().manual_seed(3)
    c = 8
    z = torch.randn(20000, c, generator=generator) * 3
    # per-class miscalibration that one temperature cannot undo
    true_scale = torch.linspace(0.3, 1.5, c)
    true_bias = torch.linspace(-1.0, 1.0, c)
    labels = sample_labels(z.double() * true_scale + true_bias, 1.0, generator)
    before = nll(z, labels)
    after_t = nll(TemperatureScaler().fit(z, labels)(z), labels)
    vector = VectorScaler(num_classes=c).fit(z, labels, lr=1.0)  # quasi-Newton first step
    after_v = nll(vector(z), labels)
    assert after_v < after_t - 0.05 and after_t <= before
    assert (vector.scale > 0).all()
    torch.testing.assert_close(vector.scale, true_scale, atol=0.1, rtol=0)
    bias = vector.bias.detach()
    torch.testing.assert_close(bias - bias.mean(), true_bias - true_bias.mean(), atol=0.15, rtol=0)


@pytest.mark.emulation_skip(EMULATION_FIT)
def test_platt_scaling_binary():
    generator = torch.Generator().manual_seed(5)
    z = torch.randn(20000, generator=generator) * 2
    labels = torch.bernoulli(torch.sigmoid(0.5 * z + 0.7), generator=generator)
    scaler = VectorScaler(num_classes=1).fit(z, labels)
    assert scaler.scale.item() == pytest.approx(0.5, abs=0.05)
    assert scaler.bias.item() == pytest.approx(0.7, abs=0.05)
    assert nll(scaler(z), labels) <= nll(z, labels)
    with torch.no_grad():
        assert scaler(z).shape == z.shape


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: TemperatureScaler(init_temperature=0.0), ValueError, "init_temperature"),
        (lambda: TemperatureScaler(init_temperature=-1.0), ValueError, "init_temperature"),
        (lambda: VectorScaler(num_classes=0), ValueError, "num_classes"),
        (
            lambda: TemperatureScaler().fit(torch.randn(4, 3), torch.zeros(4).long(), max_iter=0),
            ValueError,
            "max_iter",
        ),
        (
            lambda: TemperatureScaler().fit(torch.randn(4, 3), torch.zeros(4).long(), lr=-1.0),
            ValueError,
            "lr",
        ),
        (
            lambda: TemperatureScaler().fit(torch.randn(4, 3), torch.tensor([0, 3, 1, 1])),
            ValueError,
            "labels",
        ),
        (
            lambda: TemperatureScaler().fit(torch.tensor([[1.0, float("inf")]]), torch.tensor([0])),
            ValueError,
            "finite",
        ),
        (
            lambda: TemperatureScaler().fit(torch.arange(4), torch.tensor([0, 1, 1, 0])),
            TypeError,
            "logits",
        ),
        (
            lambda: VectorScaler(num_classes=3).fit(torch.randn(4, 5), torch.zeros(4).long()),
            ValueError,
            "num_classes",
        ),
        (
            lambda: VectorScaler(num_classes=3).fit(torch.randn(4), torch.zeros(4).long()),
            ValueError,
            "num_classes",
        ),
        (lambda: VectorScaler(num_classes=3)(torch.randn(4, 5)), ValueError, "logits"),
        (lambda: TemperatureScaler()(torch.arange(3)), TypeError, "logits"),
    ],
)
def test_scaler_bad_inputs_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# Reliability diagram


@pytest.mark.parametrize("num_classes", [1, 10], ids=["binary", "C10"])
def test_reliability_diagram_writes_png(tmp_path, num_classes):
    pytest.importorskip("matplotlib")
    logits, labels = random_inputs(2000, num_classes)
    path = tmp_path / "diagram.png"
    fig = reliability_diagram(logits, labels, n_bins=10, path=path, title="test")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    ece = calibration_error(logits, labels, n_bins=10).item()
    title = fig.axes[0].get_title()
    assert title.startswith("test") and f"ECE = {100 * ece:.2f}%" in title
    assert reliability_diagram(logits, labels) is not None  # without path: nothing written


@pytest.mark.parametrize("num_classes", [1, 10], ids=["binary", "C10"])
def test_confidence_histogram_writes_png(tmp_path, num_classes):
    pytest.importorskip("matplotlib")
    logits, labels = random_inputs(2000, num_classes)
    path = tmp_path / "confidence.png"
    fig = confidence_histogram(logits, labels, n_bins=10, path=path, title="test")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    confidence, correct = reference_confidences(logits, labels)
    title = fig.axes[0].get_title()
    assert title.startswith("test")
    assert f"accuracy {100 * correct.double().mean():.2f}%" in title
    assert f"mean confidence {100 * confidence.mean():.2f}%" in title
    heights = [patch.get_height() for patch in fig.axes[0].patches]
    counts = torch.bincount(_bin_indices(confidence, 10), minlength=10).double() / 2000
    torch.testing.assert_close(torch.tensor(heights, dtype=torch.float64), counts)


@pytest.mark.parametrize("draw", [reliability_diagram, confidence_histogram])
def test_figures_without_matplotlib(monkeypatch, draw):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"logitops\[examples\]"):
        draw(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))


def test_runtime_does_not_import_matplotlib():
    code = (
        "import sys, torch, logitops.calibration as c;"
        "c.calibration_error(torch.randn(5, 3), torch.zeros(5, dtype=torch.long));"
        "assert 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
