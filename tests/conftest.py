import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
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
