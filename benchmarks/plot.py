"""PNG plots of benchmark JSON: time and achieved bandwidth against the varying dimension
(vocabulary, or batch for sampling, or tokens for the linear ops), one line per provider.

    python benchmarks/plot.py benchmarks/results [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        payload = json.loads(path.read_text())
        for r in payload["results"]:
            if r.get("median_ms"):
                r["device_name"] = payload["meta"]["device_name"]
                rows.append(r)
    return rows


DIM_NAMES = {2: ("N", "V"), 3: ("N", "H", "V")}  # shapes 'NxV' and, for linear ops, 'NxHxV'
AXIS_LABELS = {"N": "batch", "H": "hidden", "V": "vocab"}


def series(rows: list[dict]):
    """{(op, mode, dtype, fixed dims label): {provider: [(x, ms, gbps)]}}: per op, the points
    along the last dimension that varies (the vocabulary when it does), the others fixed."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    by_key = defaultdict(list)
    for r in rows:
        by_key[(r["op"], r["mode"], r["dtype"])].append(r)
    for (op, mode, dtype), items in by_key.items():
        shapes = [tuple(int(v) for v in r["shape"].split("x")) for r in items]
        names = DIM_NAMES.get(len(shapes[0]))
        if names is None or any(len(shape) != len(names) for shape in shapes):
            continue
        varying = [d for d in range(len(names)) if len({shape[d] for shape in shapes}) > 1]
        if not varying:
            continue
        axis = varying[-1]
        for r, shape in zip(items, shapes, strict=True):
            fixed = ",".join(f"{names[d]}={shape[d]}" for d in range(len(names)) if d != axis)
            groups[(op, mode, dtype, fixed, AXIS_LABELS[names[axis]])][r["provider"]].append(
                (shape[axis], r["median_ms"], r.get("gbps"))
            )
    return groups


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, help="a JSON file or a directory of them")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = sorted(args.results.glob("*.json")) if args.results.is_dir() else [args.results]
    out_dir = args.out or (args.results if args.results.is_dir() else args.results.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = load(paths)
    groups = series(rows)
    written = []
    device = rows[0]["device_name"] if rows else ""
    for (op, mode, dtype, fixed, xlabel), providers in sorted(groups.items()):
        if all(len(points) < 2 for points in providers.values()):
            continue  # a single size: nothing to draw a line through
        fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
        for provider, points in sorted(providers.items()):
            points.sort()
            xs = [p[0] for p in points]
            ax_t.plot(xs, [p[1] for p in points], marker="o", label=provider)
            if all(p[2] for p in points):
                ax_b.plot(xs, [p[2] for p in points], marker="o", label=provider)
        for ax, ylabel in ((ax_t, "median time (ms)"), (ax_b, "achieved GB/s")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        ax_t.set_yscale("log")
        ax_t.legend(fontsize=8)
        fig.suptitle(f"{op} {mode} {dtype} {fixed} — {device}")
        fig.tight_layout()
        label = fixed.replace("=", "").replace(",", "-")
        path = out_dir / f"{op}-{mode.replace('+', '_')}-{dtype}-{label}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    print(f"{len(written)} plots in {out_dir}")
    return written


if __name__ == "__main__":
    main()
