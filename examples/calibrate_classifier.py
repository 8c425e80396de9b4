"""Temperature scaling of an over-confident classifier, end to end.

Trains a small MLP on scikit-learn's digits dataset (bundled with scikit-learn, no download) for
far longer than it needs and without any regularization, so that it becomes over-confident;
fits a temperature on a validation split with :class:`logitops.calibration.TemperatureScaler`;
and compares ECE / MCE / NLL / accuracy on the test split before and after, with reliability
diagrams saved as PNG.

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
from logitops.calibration import TemperatureScaler, calibration_error, reliability_diagram


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


def metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> dict[str, float]:
    with torch.no_grad():
        return {
            "ECE (%)": 100 * calibration_error(logits, labels, n_bins=n_bins).item(),
            "MCE (%)": 100 * calibration_error(logits, labels, n_bins=n_bins, norm="max").item(),
            "NLL": logitops.cross_entropy(logits, labels).item(),
            "accuracy (%)": 100 * (logits.argmax(1) == labels).double().mean().item(),
        }


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

    scaler = TemperatureScaler().fit(logits["val"], labels["val"])
    print(f"temperature fitted on the validation split: T = {scaler.temperature:.3f}")
    with torch.no_grad():
        calibrated = scaler(logits["test"])

    before = metrics(logits["test"], labels["test"], args.bins)
    after = metrics(calibrated, labels["test"], args.bins)
    print(f"\ntest split ({len(labels['test'])} samples, {args.bins} bins)")
    print(f"{'metric':<14}{'before':>10}{'after':>10}")
    for name in before:
        print(f"{name:<14}{before[name]:>10.3f}{after[name]:>10.3f}")
    print("(MCE is the gap of the worst non-empty bin, often one holding a handful of samples)")

    args.out.mkdir(parents=True, exist_ok=True)
    for tag, test_logits in (("before", logits["test"]), ("after", calibrated)):
        path = args.out / f"reliability_{tag}.png"
        heading = (
            "uncalibrated"
            if tag == "before"
            else f"temperature-scaled, T = {scaler.temperature:.2f}"
        )
        reliability_diagram(test_logits, labels["test"], n_bins=args.bins, path=path, title=heading)
        print(f"saved {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
