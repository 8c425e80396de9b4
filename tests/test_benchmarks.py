"""The benchmark scripts run end to end (tiny shapes) and write well-formed results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import bench_bce_with_logits  # noqa: E402
import bench_cross_entropy  # noqa: E402
import bench_distillation  # noqa: E402
import bench_linear_cross_entropy  # noqa: E402
import bench_sampling  # noqa: E402
import plot  # noqa: E402
import pytest  # noqa: E402


def test_cross_entropy_benchmark_writes_results(tmp_path, capsys):
    results = bench_cross_entropy.main(
        [
            "--device",
            "cpu",
            "--shapes",
            "16x100",
            "--reps",
            "2",
            "--providers",
            "logitops,torch,liger",
            "--out",
            str(tmp_path),
        ]
    )
    table = capsys.readouterr().out
    assert "logitops" in table and "median ms" in table
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    payload = json.loads(files[0].read_text())
    assert {"device_name", "torch", "git_sha", "date"} <= set(payload["meta"])
    assert payload["copy_gbps"] > 0
    timed = [r for r in payload["results"] if r["median_ms"]]
    assert {r["provider"] for r in timed} == {"logitops", "torch"}
    assert {r["mode"] for r in timed} == {"fwd", "bwd", "fwd+bwd"}
    assert all(r["gbps"] > 0 for r in timed if r["mode"] != "bwd")
    assert all(r["extra"]["peak_extra_mb"] is not None for r in timed if r["mode"] == "fwd+bwd")
    assert any(r["skipped"] for r in payload["results"] if r["provider"] == "liger")
    assert len(results) == len(payload["results"])


def test_bce_benchmark_writes_results(tmp_path):
    bench_bce_with_logits.main(
        [
            "--device",
            "cpu",
            "--shapes",
            "8x16",
            "--reps",
            "2",
            "--providers",
            "logitops,torch",
            "--out",
            str(tmp_path),
        ]
    )
    payload = json.loads(next(tmp_path.glob("*.json")).read_text())
    timed = [r for r in payload["results"] if r["median_ms"]]
    assert len(timed) == 12 and all(r["ratio_vs_torch"] for r in timed)


def test_sampling_benchmark_writes_results(tmp_path):
    results = bench_sampling.main(
        [
            "--device",
            "cpu",
            "--vocab",
            "500",
            "--batches",
            "2",
            "--reps",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    timed = [r for r in results if r.median_ms]
    assert {r.op for r in timed} == {"filter", "sample"}
    assert all(r.ratio_vs_torch for r in timed)
    assert any(r.provider == "flashinfer" and r.skipped for r in results)


def test_distillation_benchmark_writes_results(tmp_path):
    results = bench_distillation.main(
        [
            "--device",
            "cpu",
            "--shapes",
            "8x50",
            "--reps",
            "2",
            "--providers",
            "logitops,torch",
            "--out",
            str(tmp_path),
        ]
    )
    timed = [r for r in results if r.median_ms]
    assert len(timed) == 8 and all(r.ratio_vs_torch for r in timed)


def test_linear_cross_entropy_benchmark_writes_results(tmp_path):
    results = bench_linear_cross_entropy.main(
        [
            "--device",
            "cpu",
            "--shapes",
            "16x8x50,32x8x50",
            "--reps",
            "2",
            "--providers",
            "logitops,torch,liger",
            "--out",
            str(tmp_path),
        ]
    )
    timed = [r for r in results if r.median_ms]
    assert {r.provider for r in timed} == {"logitops", "torch"}
    assert all(r.ratio_vs_torch and r.extra["tflops"] > 0 for r in timed)
    assert any(r.provider == "liger" and r.skipped for r in results)
    pytest.importorskip("matplotlib")
    plots = plot.main([str(tmp_path)])  # 'NxHxV' shapes, tokens varying
    assert sorted(p.name for p in plots) == [
        "linear_ce-fwd_bwd-bf16-H8-V50.png",
        "linear_ce-fwd_bwd-fp32-H8-V50.png",
    ]
