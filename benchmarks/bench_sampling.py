"""Filtering and sampling: logitops vs transformers' warper chain (sort-based) and, on a GPU
where installed, FlashInfer; same run.

Bytes counted (minimal traffic): filter reads and writes B*V*s; sample reads B*V*s.

    python benchmarks/bench_sampling.py --quick
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

import logitops  # noqa: E402

TEMPERATURE, TOP_K, TOP_P = 0.8, 50, 0.9


def hf_chain():
    """transformers' warpers if installed, else the same sort-based algorithm restated."""
    try:
        tf = importlib.import_module("transformers")
        warpers = [
            tf.TemperatureLogitsWarper(TEMPERATURE),
            tf.TopKLogitsWarper(TOP_K),
            tf.TopPLogitsWarper(TOP_P),
        ]
        name = "hf_warpers"
    except ImportError:
        warpers = None
        name = "hf_restated"

    def chain(scores):
        if warpers is not None:
            for w in warpers:
                scores = w(None, scores)
            return scores
        scores = scores / TEMPERATURE
        kth = torch.topk(scores, TOP_K)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
        sorted_logits, idx = torch.sort(scores)
        remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - TOP_P
        remove[..., -1:] = False
        return scores.masked_fill(remove.scatter(-1, idx, remove), -float("inf"))

    return name, chain


def providers(device: str):
    hf_name, chain = hf_chain()
    filters = {
        "logitops": lambda x: logitops.filter_logits(
            x, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P
        ),
        hf_name: chain,
    }
    samplers = {
        "logitops": lambda x: logitops.sample(x, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P),
        hf_name + "+multinomial": lambda x: torch.multinomial(torch.softmax(chain(x), -1), 1),
    }
    try:
        fi = importlib.import_module("flashinfer.sampling")
        if device == "cuda":
            samplers["flashinfer"] = lambda x: fi.top_k_top_p_sampling_from_logits(
                x / TEMPERATURE, TOP_K, TOP_P
            )
        else:
            samplers["flashinfer"] = "needs CUDA"
    except ImportError:
        samplers["flashinfer"] = "not installed"
    return filters, samplers, hf_name


def main(argv=None) -> list[harness.Measurement]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--batches", default=None, help="e.g. 1,32,128,512")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = args.device
    reps = args.reps or (50 if device == "cuda" else 7)
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    elif device == "cuda":
        batches = [1, 32, 128, 512]
    else:
        batches = [1, 64] if args.quick else [1, 32, 64, 128]
    filters, samplers, hf_name = providers(device)

    copy_gbps = harness.copy_bandwidth_gbps(device)
    print(
        f"# {harness.device_name(device)}, torch {torch.__version__}, copy {copy_gbps:.1f} GB/s;"
        f" T={TEMPERATURE}, top_k={TOP_K}, top_p={TOP_P}"
    )
    results: list[harness.Measurement] = []
    started = time.perf_counter()
    for batch in harness.progress(batches, "batches"):
        logits = torch.randn(batch, args.vocab, device=device)
        nbytes = logits.numel() * logits.element_size()
        shape = f"{batch}x{args.vocab}"
        for op, table, moved, baseline in (
            ("filter", filters, 2 * nbytes, hf_name),
            ("sample", samplers, nbytes, hf_name + "+multinomial"),
        ):
            for name, fn in table.items():
                if isinstance(fn, str):
                    results += harness.skipped(
                        op, name, fn, shape=shape, dtype="fp32", modes=["fwd"]
                    )
                    continue
                if harness.past_deadline():
                    results += harness.skipped(
                        op, name, "deadline passed", shape=shape, dtype="fp32", modes=["fwd"]
                    )
                    continue
                print(f"  {op} {name} {shape} ...", file=sys.stderr, flush=True)
                median, p20, p80 = harness.time_fn(lambda fn=fn, x=logits: fn(x), device, reps=reps)
                m = harness.Measurement(
                    op, name, "fwd", shape, "fp32", median, p20, p80, bytes_moved=moved
                )
                m.extra["baseline"] = baseline
                results.append(m)
                # Bandwidths only: the ratios against the HF chain are filled in at the end.
                harness.checkpoint(
                    "sampling", device, results, copy_gbps, args.out, baseline_provider=None
                )
    # Ratios against the HF chain of the same op (the harness compares with "torch").
    for m in results:
        if m.median_ms and "baseline" in m.extra:
            base = next(
                (
                    b.median_ms
                    for b in results
                    if b.op == m.op and b.shape == m.shape and b.provider == m.extra["baseline"]
                ),
                None,
            )
            m.ratio_vs_torch = base / m.median_ms if base else None
    for m in results:
        m.extra.pop("baseline", None)
    harness.finish(results, copy_gbps, baseline_provider=None)
    harness.print_table(results)
    path = harness.write_json("sampling", device, results, copy_gbps, args.out)
    print(f"# {len(results)} results in {time.perf_counter() - started:.0f} s -> {path}")
    return results


if __name__ == "__main__":
    main()
