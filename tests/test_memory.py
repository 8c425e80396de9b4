"""Peak memory of a training step, measured in a fresh process (peak RSS)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# ru_maxrss would carry the parent's peak across fork + exec: reset the high-water mark through
# /proc/self/clear_refs and read VmHWM instead.
STEP = """
import sys, torch, logitops, torch.nn.functional as F

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

torch.set_num_threads(1)
rows, vocab = 2048, 32000
x = torch.randn(rows, vocab, requires_grad=True)
t = torch.randint(0, vocab, (rows,))
fn = logitops.cross_entropy if sys.argv[1] == "logitops" else F.cross_entropy
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status_kib("VmRSS")
fn(x, t, label_smoothing=0.1).backward()
print((status_kib("VmHWM") - base) * 1024)
"""


def peak_extra_bytes(provider: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", STEP, provider], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_training_step_needs_only_the_gradient():
    grad_bytes = 2048 * 32000 * 4
    ours = peak_extra_bytes("logitops")
    theirs = peak_extra_bytes("torch")
    # The gradient itself (padded to 2 MiB huge pages) plus O(rows) and allocator slack.
    assert ours <= grad_bytes + (24 << 20), (ours, grad_bytes)
    assert theirs > ours, (theirs, ours)
