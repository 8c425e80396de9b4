import pytest
import torch

import logitops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# LOGITOPS_CUDA_EMULATION=1: the ops on CPU tensors are the CUDA launchers and kernels run by the
# emulator (csrc/emulation), one fiber per CUDA thread. Tests marked emulation_skip(reason) are
# too large for it; a few others scale their sizes down (EMULATION_SCALE).
EMULATION = bool(logitops.build_info()["cuda_emulation"])
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

# (rtol, atol) of a logitops result against the float64 oracle, per input dtype. Half-precision
# outputs are rounded once to their dtype, so the bound is a few units of their last place.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.bfloat16: (2e-2, 2e-3),
    torch.float16: (4e-3, 2e-4),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
        marker = item.get_closest_marker("emulation_skip")
        if EMULATION and marker is not None:
            reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"too large for CUDA emulation: {reason}"))


def assert_close(actual, expected, dtype, *, scale=1.0, what=""):
    """assert_close against a float64 oracle with the dtype's tolerance."""
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.double().cpu(),
        expected.double().cpu(),
        rtol=rtol,
        atol=atol * scale,
        equal_nan=True,
        msg=lambda m: f"{what}: {m}",
    )
