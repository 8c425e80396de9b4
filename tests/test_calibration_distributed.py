"""The stateful calibration metrics across 2 gloo ranks spawned on the CPU: each rank updates
with its own batches (uneven, one rank without any, dtypes mixed) and compute() returns, on every
rank, the metric of all the batches together (states summed, or gathered for the rank-based
bins), which is the function of the concatenated batches in one process."""

from __future__ import annotations

import multiprocessing
import time

import calibration_worker
import pytest
import torch
import torch.distributed as dist

from logitops.calibration import (
    adaptive_calibration_error,
    brier_score,
    calibration_error,
    negative_log_likelihood,
)

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

WORLD = 2

FUNCTIONS = {
    "ece": lambda x, y: calibration_error(x, y, n_bins=10),
    "mce-adaptive": lambda x, y: calibration_error(x, y, n_bins=7, norm="max", binning="adaptive"),
    "classwise": lambda x, y: calibration_error(x, y, classwise=True, norm="l2"),
    "classwise-adaptive": lambda x, y: calibration_error(x, y, binning="adaptive", classwise=True),
    "ace": lambda x, y: adaptive_calibration_error(x, y, n_bins=6),
    "brier": lambda x, y: brier_score(x, y),
    "brier-decomposed": lambda x, y: brier_score(x, y, decompose=True, n_bins=5),
    "nll": lambda x, y: negative_log_likelihood(x, y),
}


def make_batches(num_classes, sizes, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        shape = (n,) if num_classes == 1 else (n, num_classes)
        logits = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
        high = 2 if num_classes == 1 else num_classes
        out.append((logits, torch.randint(0, high, (n,), generator=g)))
    return out


def build_cases():
    cases = []
    for metric in FUNCTIONS:
        for num_classes in (1, 5):
            seed = len(cases)
            cases.append(
                {
                    "name": f"{metric}-C{num_classes}",
                    "metric": metric,
                    "num_classes": num_classes,
                    "batches": [
                        make_batches(num_classes, (40, 3), seed),
                        make_batches(num_classes, (17, 60, 1), seed + 100),
                    ],
                    "second_round": True,
                }
            )
        # rank 1 sees no batch: it still takes part in compute() with empty states
        cases.append(
            {
                "name": f"{metric}-idle-rank",
                "metric": metric,
                "num_classes": 4,
                "batches": [make_batches(4, (30, 9), 999), []],
                "second_round": False,
            }
        )
    # float64 on one rank, float32 on the other: float32 results on both
    cases.append(
        {
            "name": "nll-mixed-dtypes",
            "metric": "nll",
            "num_classes": 3,
            "batches": [
                make_batches(3, (20,), 7),
                make_batches(3, (20,), 8, dtype=torch.float32),
            ],
            "second_round": False,
        }
    )
    return cases


CASES = build_cases()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("calibration_ranks")
    context = multiprocessing.get_context("spawn")
    outputs = [tmp_path / f"rank{r}.pt" for r in range(WORLD)]
    procs = [
        context.Process(
            target=calibration_worker.main,
            args=(r, WORLD, str(tmp_path / "store"), CASES, str(outputs[r])),
        )
        for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 240.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} did not finish in time"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(path, weights_only=False) for path in outputs]


def as_tuple(value):
    return tuple(value) if isinstance(value, tuple) else (value,)


def check_close(ours, expected, dtype):
    # float32 batches are computed in float32 (the expected value in float64)
    rtol, atol = (1e-12, 1e-14) if dtype == torch.float64 else (2e-5, 2e-6)
    for a, b in zip(as_tuple(ours), as_tuple(expected), strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b.to(dtype), rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_every_rank_gets_the_metric_of_all_batches(ranks, case):
    per_rank = [results[case["name"]] for results in ranks]
    for rank, result in enumerate(per_rank):
        assert "error" not in result, f"rank {rank}: {result.get('traceback')}"
    everything = [batch for batches in case["batches"] for batch in batches]
    logits = torch.cat([x.double() for x, _ in everything])
    labels = torch.cat([y for _, y in everything])
    expected = FUNCTIONS[case["metric"]](logits, labels)
    mixed = any(x.dtype != torch.float64 for x, _ in everything)
    dtype = torch.float32 if mixed else torch.float64
    for result in per_rank:
        check_close(result["result"], expected, dtype)
    if case["second_round"]:
        first = [batches[0] for batches in case["batches"]]
        logits = torch.cat([x for x, _ in first])
        labels = torch.cat([y for _, y in first])
        expected = FUNCTIONS[case["metric"]](logits, labels)
        for result in per_rank:
            check_close(result["again"], expected, torch.float64)
