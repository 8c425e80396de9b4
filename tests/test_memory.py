"""Peak memory of a training step, measured in a fresh process (peak RSS)."""

from __future__ import annotations

import subprocess
import sys

import pytest

STEP = """
import resource, sys, torch, logitops, torch.nn.functional as F
torch.set_num_threads(1)
rows, vocab = 2048, 32000
x = torch.randn(rows, vocab, requires_grad=True)
t = torch.randint(0, vocab, (rows,))
fn = logitops.cross_entropy if sys.argv[1] == "logitops" else F.cross_entropy
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fn(x, t, label_smoothing=0.1).backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) * 1024)
"""


def peak_extra_bytes(provider: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", STEP, provider], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_step_needs_only_the_gradient():
    grad_bytes = 2048 * 32000 * 4
    ours = peak_extra_bytes("logitops")
    theirs = peak_extra_bytes("torch")
    # The gradient itself (padded to 2 MiB huge pages) plus O(rows) and allocator slack.
    assert ours <= grad_bytes + (24 << 20), (ours, grad_bytes)
    assert theirs > ours, (theirs, ours)
