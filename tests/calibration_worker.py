"""One rank of tests/test_calibration_distributed.py: feeds this rank's batches to each stateful
calibration metric, computes it (a collective) and saves the results for the test process."""

from __future__ import annotations

import datetime
import traceback

import torch
import torch.distributed as dist

from logitops.calibration import (
    AdaptiveCalibrationError,
    BrierScore,
    CalibrationError,
    NegativeLogLikelihood,
)

# name -> constructor from num_classes; the same names key the functions in the test.
METRICS = {
    "ece": lambda c: CalibrationError(n_bins=10),
    "mce-adaptive": lambda c: CalibrationError(n_bins=7, norm="max", binning="adaptive"),
    "classwise": lambda c: CalibrationError(classwise=True, num_classes=c, norm="l2"),
    "classwise-adaptive": lambda c: CalibrationError(
        binning="adaptive", classwise=True, num_classes=c
    ),
    "ace": lambda c: AdaptiveCalibrationError(num_classes=c, n_bins=6),
    "brier": lambda c: BrierScore(),
    "brier-decomposed": lambda c: BrierScore(decompose=True, num_classes=c, n_bins=5),
    "nll": lambda c: NegativeLogLikelihood(),
}


def run_case(case: dict, rank: int) -> dict:
    metric = METRICS[case["metric"]](case["num_classes"])
    for logits, labels in case["batches"][rank]:
        metric.update(logits, labels)
    result = metric.compute()
    metric.reset()  # a second round after reset sees only the new batches
    for logits, labels in case["batches"][rank][:1]:
        metric.update(logits, labels)
    again = metric.compute() if case["second_round"] else None
    return {"result": result, "again": again}


def main(rank: int, world_size: int, init_file: str, cases: list, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=90),
    )
    results = {}
    try:
        for case in cases:
            try:
                results[case["name"]] = run_case(case, rank)
            except Exception as exc:  # reported per case by the test process
                results[case["name"]] = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
    finally:
        torch.save(results, out_path)
        dist.destroy_process_group()
