"""The main job: every benchmark family on whatever device exists (quick subset by default).

python benchmarks/run.py            # --quick on cuda if visible, else cpu
python benchmarks/run.py --full     # all shapes
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
sys.path.insert(0, str(Path(__file__).parent))

import bench_bce_with_logits  # noqa: E402
import bench_cross_entropy  # noqa: E402
import bench_distillation  # noqa: E402
import bench_linear_cross_entropy  # noqa: E402
import bench_sampling  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true", help="all shapes instead of --quick")
    parser.add_argument("--out", default=None, help="directory for JSON results")
    args = parser.parse_args()
    common = ["--device", args.device] + ([] if args.full else ["--quick"])
    if args.out:
        common += ["--out", args.out]
    bench_cross_entropy.main(common)
    bench_bce_with_logits.main(common)
    bench_sampling.main(common)
    bench_distillation.main(common)
    bench_linear_cross_entropy.main(common)


if __name__ == "__main__":
    main()
