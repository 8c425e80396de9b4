"""The benchmark scripts run end to end (tiny shapes) and write well-formed results."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_bce_with_logits  # noqa: E402
import bench_cross_entropy  # noqa: E402
import bench_distillation  # noqa: E402
import bench_linear_cross_entropy  # noqa: E402
import bench_sampling  # noqa: E402
import bench_token_logprobs  # noqa: E402
import bench_transformers  # noqa: E402
import bench_vocab_parallel  # noqa: E402
import harness  # noqa: E402
import plot  # noqa: E402
import pytest  # noqa: E402
import run  # noqa: E402
import sweep  # noqa: E402

pytestmark = pytest.mark.emulation_skip("benchmark shapes (the scripts time the kernels)")


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
    assert {r.op for r in timed} == {"filter", "sample", "decode"}
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


def test_vocab_parallel_benchmark_writes_results(tmp_path):
    pytest.importorskip("torch.distributed")
    results = bench_vocab_parallel.main(
        [
            "--device",
            "cpu",
            "--shapes",
            "16x100",
            "--dtypes",
            "fp32",
            "--reps",
            "2",
            "--providers",
            "logitops,torch,logitops.cross_entropy",
            "--out",
            str(tmp_path),
        ]
    )
    timed = [r for r in results if r.median_ms]
    assert {r.provider for r in timed} == {"logitops", "torch", "logitops.cross_entropy"}
    assert {r.mode for r in timed} == {"fwd", "bwd", "fwd+bwd"}
    assert all(r.ratio_vs_torch for r in timed)
    payload = json.loads(next(tmp_path.glob("*-vocab_parallel-cpu-*.json")).read_text())
    assert len(payload["results"]) == len(results)
    import torch.distributed as dist

    assert not dist.is_initialized()  # the one-rank group is torn down


def test_token_logprobs_benchmark_writes_results(tmp_path):
    results = bench_token_logprobs.main(
        ["--device", "cpu", "--shapes", "16x8x50", "--reps", "2", "--providers", "logitops,torch"]
        + ["--out", str(tmp_path)]
    )
    timed = [r for r in results if r.median_ms]
    assert {r.op for r in timed} == {"logprobs", "linear_logprobs"}
    assert len(timed) == 16 and all(r.ratio_vs_torch for r in timed)
    assert all(r.extra["peak_extra_mb"] is not None for r in timed if r.mode == "fwd+bwd")
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_every_benchmark_script_is_a_family_of_run_py():
    """Each bench_*.py declares a harness.Family (run_family is its main loop) and run.py runs
    it, with tiny arguments for --smoke."""
    scripts = sorted(p.stem[len("bench_") :] for p in ROOT.glob("benchmarks/bench_*.py"))
    assert sorted(run.FAMILIES) == scripts == sorted(run.SMOKE_ARGS)
    for name in scripts:
        module = importlib.import_module(f"bench_{name}")
        assert isinstance(module.FAMILY, harness.Family) and module.FAMILY.name == name


# --- tools/gpu_check.sh: what it returns must fit the device tool's limits --------------------
OUT_LIMITS = {"files": 8, "bytes": 16 << 20, "folders_deep": 2}
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def run_gpu_check(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("LOGITOPS_BENCH_DEADLINE", None)
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), str(out), "--device", "cpu"]
        + ["--smoke", "--skip-build", "--skip-tests", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def check_out_limits(out: Path) -> dict:
    """Every file under out within the limits; returns {relative path: payload or None}."""
    files = [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    assert len(files) <= OUT_LIMITS["files"], files
    for p in files:
        rel = p.relative_to(out)
        assert not p.is_symlink(), rel
        assert len(rel.parts) - 1 <= OUT_LIMITS["folders_deep"], rel
        assert all(set(part) <= NAME_CHARS for part in rel.parts), rel
        assert p.stat().st_size <= OUT_LIMITS["bytes"], rel
    return {str(p.relative_to(out)): p for p in files}


def stage_statuses(out: Path) -> dict[str, str]:
    state = json.loads((out / "stages.json").read_text())
    return {s["name"]: s["status"] for s in state["stages"]}


def test_gpu_check_on_the_cpu_returns_few_flat_files(tmp_path):
    out = tmp_path / "out"
    proc = run_gpu_check(out, "--budget", "300")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = check_out_limits(out)
    assert set(files) == {
        "summary.md",
        "stages.json",
        "logs.tar.gz",
        "results/headline.json",
        "results/benchmarks.json",
    }
    status = stage_statuses(out)
    assert list(status)[:4] == ["build", "import", "headline_ce", "headline_sampling"]
    assert status["build"].startswith("skipped (--skip-build")
    for name in ("import", "headline_ce", "headline_sampling", "benchmarks"):
        assert status[name] == "ok", status
    for name in ("memcheck", "racecheck", "ncu"):
        assert status[name] == "skipped (--device cpu)", status
    assert status["tests"] == "skipped (--skip-tests)"

    headline = json.loads((out / "results" / "headline.json").read_text())["files"]
    rows = [r for payload in headline.values() for r in payload["results"]]
    ce = [r for r in rows if r["op"] == "cross_entropy" and r["mode"] == "fwd+bwd"]
    assert {r["provider"] for r in ce if r["median_ms"]} == {"logitops", "torch"}
    assert all(r["gbps"] > 0 and r["fraction_of_copy"] > 0 for r in ce if r["median_ms"])
    assert {r["shape"] for r in rows if r["op"] == "sample"} == {"1x1000", "4x1000"}
    families = json.loads((out / "results" / "benchmarks.json").read_text())["files"]
    for family in run.FAMILIES:
        assert any(f"-{family}-cpu-" in name for name in families), (family, list(families))

    summary = (out / "summary.md").read_text()
    assert "## Headline" in summary and "| cross_entropy | fwd+bwd | 64x1000 | bf16 |" in summary
    for tool in ("compute-sanitizer", "ncu"):  # where the script looks for them
        cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
        places = [f"{cuda_home}/bin", "/usr/local/cuda/bin", "/usr/local/cuda/compute-sanitizer"]
        found = shutil.which(tool) or any(Path(d, tool).exists() for d in places)
        found = found or any(Path("/opt/nvidia").glob(f"nsight-compute/*/{tool}"))
        assert (f"{tool}: not found" in summary) != bool(found), tool

    with tarfile.open(files["logs.tar.gz"]) as tar:
        names = set(tar.getnames())
    for log in ("import", "headline_ce", "headline_sampling", "benchmarks"):
        assert f"./logs/{log}.log" in names, sorted(names)
    assert any(n.startswith("./raw/headline/") and n.endswith(".json") for n in names)


def test_gpu_check_stage_cut_at_its_limit_keeps_earlier_results(tmp_path):
    out = tmp_path / "out"
    # One second cannot even import torch and logitops: both stages are cut mid-run.
    proc = run_gpu_check(out, "--budget", "300", "--cap", "headline_sampling=1", "--cap",
                         "benchmarks=1")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_out_limits(out)
    status = stage_statuses(out)
    assert status["headline_ce"] == "ok"
    assert status["headline_sampling"].startswith("cut at its 1s limit")
    assert status["benchmarks"].startswith("cut at its 1s limit")
    headline = json.loads((out / "results" / "headline.json").read_text())["files"]
    assert [name for name in headline if "-cross_entropy-" in name]
    assert "cut at its 1s limit" in (out / "summary.md").read_text()


def test_gpu_check_rejects_unknown_arguments(tmp_path):
    proc = run_gpu_check(tmp_path / "out", "--budget", "ten")
    assert proc.returncode == 2 and "--budget" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_transformers_benchmark_writes_results(tmp_path, capsys):
    pytest.importorskip("transformers")
    results = bench_transformers.main(
        ["--device", "cpu", "--shapes", "1x8x16x50", "--dtypes", "fp32", "--reps", "1",
         "--providers", "transformers,logitops,logitops loss_function", "--out", str(tmp_path)]
    )  # fmt: skip
    assert "logitops loss_function" in capsys.readouterr().out
    payload = json.loads(next(tmp_path.glob("*.json")).read_text())
    timed = [r for r in payload["results"] if r["median_ms"]]
    assert {r["provider"] for r in timed} == {"transformers", "logitops", "logitops loss_function"}
    assert all(r["extra"]["peak_extra_mb"] is not None for r in timed)
    assert len(results) == len(payload["results"])


@pytest.mark.parametrize("family", sweep.FAMILIES)
def test_sweep_writes_ratios_and_heat_map(tmp_path, family):
    argv = ["--family", family, "--rows", "2,5", "--vocab", "7,40", "--rounds", "1"]
    argv += ["--reps", "2", "--hidden", "8", "--providers", "logitops,eager"]
    argv += ["--out", str(tmp_path)]
    argv += ["--max-elements", "100"]  # 5 x 40 is left out
    result = sweep.main(argv)
    (written,) = tmp_path.glob("*.json")
    assert json.loads(written.read_text()) == result
    cells = {(c["rows"], c["vocab"]): c for c in result["cells"]}
    assert set(cells) == {(2, 7), (2, 40), (5, 7), (5, 40)}
    assert "skipped" in cells[(5, 40)] and "ratio_vs_eager" not in cells[(5, 40)]
    for key in [(2, 7), (2, 40), (5, 7)]:
        c = cells[key]
        assert c["logitops_ms"] > 0 and c["eager_ms"] > 0
        assert c["ratio_vs_eager"] == pytest.approx(c["eager_ms"] / c["logitops_ms"], rel=1e-2)
    assert list(tmp_path.glob("*.png"))
