"""Post-hoc calibration of an over-confident classifier, end to end.

Trains a small MLP on scikit-learn's digits dataset (bundled with scikit-learn, no download) for
far longer than it needs and without any regularization, so that it becomes over-confident;
fits temperature, vector and matrix scaling and Dirichlet calibration (the last two with ODIR
regularization) on a validation split; and compares, on the test split, the calibration
metrics of logitops.calibration: top-label ECE over equal-width and equal-mass bins, classwise
ECE, ACE, MCE, the Brier score with its reliability / resolution / uncertainty terms, NLL and
accuracy. The test split is fed in batches to the stateful metrics, as an evaluation loop over
a large dataset would. Reliability diagrams and confidence histograms are saved as PNG.

Needs the ``examples`` extra: ``pip install logitops[examples]`` (scikit-learn, matplotlib).

    python examples/calibrate_classifier.py --out ./calibration_out
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import logitops
from logitops.calibration import (
    AdaptiveCalibrationError,
    BrierScore,
    CalibrationError,
    DirichletCalibrator,
    MatrixScaler,
    NegativeLogLikelihood,
    TemperatureScaler,
    VectorScaler,
    confidence_histogram,
    reliability_diagram,
)

NUM_CLASSES = 10


def load_splits(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """40 / 30 / 30 stratified train / validation / test split of the 8x8 digits, pixels in
    [0, 1]. A small training split leaves more test errors for the over-confidence to show."""
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.6, stratify=y, random_state=seed
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed
    )
    as_tensors = lambda a, b: (  # noqa: E731
        torch.tensor(a, dtype=torch.float32),
        torch.tensor(b, dtype=torch.int64),
    )
    return {
        "train": as_tensors(x_train, y_train),
        "val": as_tensors(x_val, y_val),
        "test": as_tensors(x_test, y_test),
    }


def train_overconfident_mlp(x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.nn.Module:
    """Full-batch Adam with no weight decay, dropout or early stopping: the training loss goes
    to ~0 and the logits keep growing long after the training accuracy reaches 100%."""
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = logitops.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return model.eval()


def metrics(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int, batch_size: int = 64
) -> dict[str, float]:
    """The test metrics, accumulated batch by batch (the stateful metrics keep per-bin sums, or
    per-sample confidences for the equal-mass bins, never the logits)."""
    stateful = {
        "ECE (%)": CalibrationError(n_bins),
        "ECE adaptive (%)": CalibrationError(n_bins, binning="adaptive"),
        "classwise ECE (%)": CalibrationError(n_bins, classwise=True, num_classes=NUM_CLASSES),
        "ACE (%)": AdaptiveCalibrationError(NUM_CLASSES, n_bins),
        "MCE (%)": CalibrationError(n_bins, norm="max"),
        "Brier": BrierScore(decompose=True, num_classes=NUM_CLASSES, n_bins=n_bins),
        "NLL": NegativeLogLikelihood(),
    }
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            batch = logits[start : start + batch_size], labels[start : start + batch_size]
            for metric in stateful.values():
                metric.update(*batch)
        out = {}
        for name, metric in stateful.items():
            value = metric.compute()
            if name == "Brier":
                out["Brier"] = value.score.item()
                out["  reliability"] = value.reliability.item()
                out["  resolution"] = value.resolution.item()
                out["  uncertainty"] = value.uncertainty.item()
            else:
                out[name] = (100 if "%" in name else 1) * value.item()
        out["accuracy (%)"] = 100 * (logits.argmax(1) == labels).double().mean().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("calibration_out"))
    parser.add_argument("--steps", type=int, default=1000, help="full-batch training steps")
    parser.add_argument("--bins", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(args.seed)

    splits = load_splits(args.seed)
    sizes = ", ".join(f"{name} {len(y)}" for name, (_, y) in splits.items())
    print(f"digits: {sizes} samples")
    model = train_overconfident_mlp(*splits["train"], steps=args.steps)
    with torch.no_grad():
        logits = {name: model(x) for name, (x, _) in splits.items()}
    labels = {name: y for name, (_, y) in splits.items()}
    train_nll = logitops.cross_entropy(logits["train"], labels["train"]).item()
    print(f"after {args.steps} steps: training NLL {train_nll:.2e}")

    val = logits["val"], labels["val"]
    temperature = TemperatureScaler().fit(*val)
    print(f"temperature fitted on the validation split: T = {temperature.temperature:.3f}")
    calibrators = {
        "temperature": temperature,
        "vector": VectorScaler(NUM_CLASSES).fit(*val, lr=1.0),
        "matrix+ODIR": MatrixScaler(NUM_CLASSES, off_diagonal_l2=0.1, intercept_l2=0.1).fit(
            *val, lr=1.0
        ),
        "Dirichlet+ODIR": DirichletCalibrator(
            NUM_CLASSES, off_diagonal_l2=0.1, intercept_l2=0.1
        ).fit(*val, lr=1.0),
    }
    with torch.no_grad():
        test_logits = {"uncalibrated": logits["test"]}
        test_logits.update({name: c(logits["test"]) for name, c in calibrators.items()})

    table = {name: metrics(z, labels["test"], args.bins) for name, z in test_logits.items()}
    print(f"\ntest split ({len(labels['test'])} samples, {args.bins} bins)")
    names = list(table)
    print(f"{'metric':<20}" + "".join(f"{name:>16}" for name in names))
    for row in table[names[0]]:
        print(f"{row:<20}" + "".join(f"{table[name][row]:>16.4f}" for name in names))
    print("(MCE is the gap of the worst non-empty bin, often one holding a handful of samples)")

    args.out.mkdir(parents=True, exist_ok=True)
    for tag, name in (("before", "uncalibrated"), ("after", "temperature")):
        heading = (
            "uncalibrated"
            if tag == "before"
            else f"temperature-scaled, T = {temperature.temperature:.2f}"
        )
        for kind, draw in (
            ("reliability", reliability_diagram),
            ("confidence", confidence_histogram),
        ):
            path = args.out / f"{kind}_{tag}.png"
            draw(test_logits[name], labels["test"], n_bins=args.bins, path=path, title=heading)
            print(f"saved {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
