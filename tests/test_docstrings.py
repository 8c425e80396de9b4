"""Every public function and class has a numpy-style docstring whose Examples run: each module's
doctests are executed here (CPU, small inputs), so an example that no longer works fails CI."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys

import pytest

# The examples call the ops the op tests cover; the emulated suite runs those, the CPU suite these.
pytestmark = pytest.mark.emulation_skip("documentation examples, run by the CPU suite")

# The public modules: those a user imports, and the family modules of functional (where the
# functions are defined, so their doctests are found there).
MODULES = [
    "logitops",
    "logitops.functional",
    "logitops.functional.cross_entropy",
    "logitops.functional.bce_with_logits",
    "logitops.functional.distillation",
    "logitops.functional.linear_cross_entropy",
    "logitops.functional.sampling",
    "logitops.functional.probs",
    "logitops.functional.logprobs",
    "logitops.nn",
    "logitops.processors",
    "logitops.distributed",
    "logitops.dtensor",
    "logitops.calibration",
    # an optional dependency's integration, where that dependency is installed
    *(["logitops.integrations.transformers"] if importlib.util.find_spec("transformers") else []),
]

# Examples open with these two lines, so each one can be pasted into a fresh interpreter.
IMPORTS = [">>> import torch", ">>> import logitops"]


def _public_objects():
    """(qualified name, object) of every public function and class: the names in each public
    module's __all__ that are defined in that module (re-exports are checked where defined)."""
    seen = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if inspect.ismodule(obj) or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if obj.__module__ == name:
                seen.append((f"{name}.{attr}", obj))
    return seen


PUBLIC = _public_objects()


def test_every_public_name_is_checked():
    names = {name.rsplit(".", 1)[1] for name, _ in PUBLIC}
    assert {"cross_entropy", "sample", "CrossEntropyLoss", "LogitsFilter", "build_info"} <= names
    assert {"vocab_parallel_linear_cross_entropy", "TemperatureScaler", "VocabLayout"} <= names
    assert len(PUBLIC) >= 30


def _has_parameters(obj) -> bool:
    target = obj.__init__ if inspect.isclass(obj) else obj
    if inspect.isclass(obj) and "__init__" not in vars(obj):
        return False  # the base class's constructor (documented there, e.g. torch.nn's)
    parameters = inspect.signature(target).parameters
    return any(p not in ("self", "cls") for p in parameters)


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_public_docstring_is_numpy_style_with_examples(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert re.search(r"^Examples\n--------$", doc, re.M), f"{name}: no Examples section"
    examples = doc.split("Examples\n--------", 1)[1].strip().splitlines()
    assert examples[:2] == IMPORTS, f"{name}: the example must start with {IMPORTS}"
    if _has_parameters(obj):
        assert re.search(r"^Parameters\n----------$", doc, re.M), f"{name}: no Parameters"


# Run in a fresh interpreter per module, as a user pasting the examples would: the distributed
# examples create (and destroy) a one-rank process group, which must not meet another test's.
RUNNER = """
import doctest, importlib, sys
name = sys.argv[1]
module = importlib.import_module(name)
finder = doctest.DocTestFinder(exclude_empty=True)
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
tests = [t for t in finder.find(module, name) if t.examples]
for test in tests:
    runner.run(test)
failed, attempted = runner.summarize(verbose=False)
print(f"{attempted} examples in {len(tests)} docstrings, {failed} failed")
sys.exit(1 if failed or (not tests and name != "logitops.functional") else 0)
"""


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, name], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{name}:\n{result.stdout[-6000:]}{result.stderr[-3000:]}"
    assert " 0 failed" in result.stdout


def test_a_failing_example_fails(tmp_path):
    """The runner reports a wrong expected output (so the test above can fail)."""
    module = tmp_path / "doc_fixture.py"
    module.write_text('def f():\n    """\n    >>> 1 + 1\n    3\n    """\n')
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, "doc_fixture"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 1 and "1 failed" in result.stdout
