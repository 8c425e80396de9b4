"""Where logitops wins: the logitops / eager and logitops / torch.compile speed ratios of a
training step (forward + backward) over a grid of shapes, written to JSON and drawn as a heat map.

    python benchmarks/sweep.py --family cross_entropy            # N x V, fp32
    python benchmarks/sweep.py --family linear_cross_entropy --hidden 256
    python benchmarks/sweep.py --family bce_with_logits --quick

A ratio above 1 means logitops is faster (the other's time / logitops' time), measured in the same
run, cell by cell, the providers alternating so that a drifting machine affects them alike. Cells
whose inputs would pass --max-elements are left out (blank in the map), never estimated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

import logitops  # noqa: E402

F = torch.nn.functional
FAMILIES = ("cross_entropy", "bce_with_logits", "linear_cross_entropy")
PROVIDERS = ("logitops", "eager", "compile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


def step_functions(family: str) -> dict[str, Callable]:
    """provider -> the loss of one step, from the cell's tensors."""
    if family == "cross_entropy":
        ours = logitops.cross_entropy
        eager = F.cross_entropy
    elif family == "bce_with_logits":
        ours = logitops.binary_cross_entropy_with_logits
        eager = F.binary_cross_entropy_with_logits
    else:
        ours = logitops.linear_cross_entropy

        def eager(x, weight, target):
            return F.cross_entropy((x @ weight.T).float(), target)

    return {"logitops": ours, "eager": eager, "compile": torch.compile(eager, dynamic=False)}


def cell_inputs(family: str, rows: int, vocab: int, hidden: int, dtype, device):
    """(the leaves that get gradients, all arguments) of one cell."""
    gen = torch.Generator(device=device).manual_seed(rows * 1_000_003 + vocab)
    if family == "linear_cross_entropy":
        x = torch.randn(rows, hidden, device=device, dtype=dtype, generator=gen)
        w = torch.randn(vocab, hidden, device=device, dtype=dtype, generator=gen) / hidden**0.5
        t = torch.randint(0, vocab, (rows,), device=device, generator=gen)
        x.requires_grad_()
        w.requires_grad_()
        return (x, w), (x, w, t)
    logits = torch.randn(rows, vocab, device=device, dtype=dtype, generator=gen)
    logits.requires_grad_()
    if family == "cross_entropy":
        target = torch.randint(0, vocab, (rows,), device=device, generator=gen)
    else:
        target = torch.rand(rows, vocab, device=device, dtype=dtype, generator=gen)
    return (logits,), (logits, target)


def time_cell(fns: dict[str, Callable], leaves, args, device, rounds: int, reps: int):
    """provider -> median ms of a training step; the providers alternate round by round."""

    def step(fn):
        for leaf in leaves:
            leaf.grad = None
        fn(*args).backward()

    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up (and compilation) outside the timed rounds
        step(fn)
        step(fn)
    for _ in range(rounds):
        for name, fn in fns.items():
            median, _, _ = harness.time_fn(lambda fn=fn: step(fn), device, warmup=0, reps=reps)
            samples[name].append(median)
    return {name: min(values) for name, values in samples.items()}


def sweep(args) -> dict:
    dtype = DTYPES[args.dtype]
    fns = harness.keep_providers(step_functions(args.family), args.providers)
    if "logitops" not in fns:
        sys.exit("--providers must include logitops (the ratios are against it)")
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    deadline = time.time() + args.budget
    cells = []
    for rows in args.rows:
        for vocab in args.vocab:
            elements = rows * (vocab if args.family != "linear_cross_entropy" else args.hidden)
            elements = max(elements, rows * vocab)
            cell = {"rows": rows, "vocab": vocab}
            if elements > args.max_elements:
                cell["skipped"] = f"{elements} elements > --max-elements"
            elif time.time() > deadline:
                cell["skipped"] = "past the time budget"
            else:
                leaves, inputs = cell_inputs(
                    args.family, rows, vocab, args.hidden, dtype, args.device
                )
                reps = max(3, min(args.reps, int(2e8 // max(1, elements))))
                ms = time_cell(fns, leaves, inputs, args.device, args.rounds, reps)
                cell.update({f"{name}_ms": round(t, 4) for name, t in ms.items()})
                for name in fns:
                    if name != "logitops":
                        cell[f"ratio_vs_{name}"] = round(ms[name] / ms["logitops"], 3)
                shown = ", ".join(
                    f"{k[9:]} {v:.2f}x" for k, v in cell.items() if k.startswith("ratio_vs_")
                )
                print(f"{rows:>6} x {vocab:<7} logitops {ms['logitops']:.3f} ms  {shown}")
            cells.append(cell)
    return {
        "family": args.family,
        "dtype": args.dtype,
        "hidden": args.hidden if args.family == "linear_cross_entropy" else None,
        "step": "forward + backward, mean reduction",
        "ratio": "other provider's time / logitops' time (> 1: logitops faster)",
        "metadata": harness.metadata(args.device),
        "cells": cells,
    }


def draw(result: dict, path: Path) -> Path | None:
    """One heat map per compared provider: log2 of the ratio, 1x white, annotated."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no heat map")
        return None
    cells = result["cells"]
    rows = sorted({c["rows"] for c in cells})
    vocab = sorted({c["vocab"] for c in cells})
    others = [p for p in PROVIDERS[1:] if any(f"ratio_vs_{p}" in c for c in cells)]
    if not others:
        return None
    fig, axes = plt.subplots(1, len(others), figsize=(1.2 + 1.3 * len(vocab) * len(others), 5))
    axes = [axes] if len(others) == 1 else list(axes)
    for ax, other in zip(axes, others, strict=True):
        grid = [[math.nan] * len(vocab) for _ in rows]
        for c in cells:
            ratio = c.get(f"ratio_vs_{other}")
            if ratio:
                grid[rows.index(c["rows"])][vocab.index(c["vocab"])] = math.log2(ratio)
        finite = [abs(v) for line in grid for v in line if not math.isnan(v)] or [1.0]
        bound = max(1.0, max(finite))
        image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
        for i, line in enumerate(grid):
            for j, v in enumerate(line):
                if not math.isnan(v):
                    ax.text(j, i, f"{2**v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(vocab)), [str(v) for v in vocab])
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
        ax.set_xlabel("V (classes)")
        ax.set_ylabel("N (rows)")
        ax.set_title(f"{other} time / logitops time")
        fig.colorbar(image, ax=ax, label="log2 ratio (blue: logitops faster)")
    meta = result["metadata"]
    hidden = f", H={result['hidden']}" if result["hidden"] else ""
    fig.suptitle(
        f"{result['family']} fwd+bwd {result['dtype']}{hidden}: {meta['device_name']}, "
        f"torch {meta['torch']}, {meta['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, default="cross_entropy")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--rows", default="1,8,64,256,1024,4096,8192")
    parser.add_argument("--vocab", default="10,100,1000,32000,128256")
    parser.add_argument("--hidden", type=int, default=256, help="linear_cross_entropy's H")
    parser.add_argument("--providers", default=None, help="subset of " + ",".join(PROVIDERS))
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell")
    parser.add_argument("--reps", type=int, default=20, help="steps per round (at most)")
    parser.add_argument("--max-elements", type=float, default=None)
    parser.add_argument("--budget", type=float, default=3600, help="seconds; later cells skipped")
    parser.add_argument("--quick", action="store_true", help="a 3 x 3 grid, 2 rounds")
    parser.add_argument("--out", default=None, help="directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.vocab, args.rounds, args.reps = "1,64,1024", "10,1000,32000", 2, 5
    args.rows = [int(r) for r in args.rows.split(",")]
    args.vocab = [int(v) for v in args.vocab.split(",")]
    if args.max_elements is None:  # what fits this machine's memory several times over
        args.max_elements = 2**31 if args.device == "cuda" else 2**28
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    print(f"# {harness.device_name(args.device)}, torch {torch.__version__}, {args.family}")
    result = sweep(args)
    out = Path(args.out) if args.out else harness.RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{result['metadata']['date'][:10]}-sweep-{args.family}-{args.dtype}-{args.device}" + (
        "-quick" if args.quick else ""
    )
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    png = draw(result, out / f"{stem}.png")
    ratios = [c["ratio_vs_eager"] for c in result["cells"] if "ratio_vs_eager" in c]
    if ratios:
        print(
            f"vs eager: min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x, "
            f"max {max(ratios):.2f}x"
        )
    print(f"wrote {out / (stem + '.json')}" + (f" and {png}" if png else ""))
    return result


if __name__ == "__main__":
    main()
