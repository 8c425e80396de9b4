"""The Python layers point one way: ops -> functional -> nn / processors / distributed /
calibration. Every submodule imports on its own, in any order, and no module below the public
layers imports logitops.functional (which would close an import cycle)."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import logitops

pytestmark = pytest.mark.emulation_skip("pure Python: the same in every build")

PACKAGE = Path(logitops.__file__).parent

# The layers above functional: they may import it. Everything else under logitops must not.
ABOVE_FUNCTIONAL = {
    "logitops",
    "logitops.nn",
    "logitops.processors",
    "logitops.distributed",
    "logitops.dtensor",
    "logitops.calibration",
    "logitops.generation",
    "logitops.integrations.transformers",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = sorted(
    _module_name(path) for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts
)
# Integration modules import their (optional) library: imported here only where it is installed.
OPTIONAL = {"logitops.integrations.transformers": "transformers"}
IMPORTABLE = [m for m in MODULES if m not in OPTIONAL or importlib.util.find_spec(OPTIONAL[m])]


def _imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``source``, function-local ones included; for
    ``from X import name`` both X and X.name (name may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def _imports_functional(source: str, module: str, is_package: bool) -> list[str]:
    return [
        f"line {line}: {target}"
        for line, target in _imported_modules(source, module, is_package)
        if target == "logitops.functional" or target.startswith("logitops.functional.")
    ]


def test_every_module_is_found():
    assert {"logitops._validation", "logitops.ops._common", "logitops.nn"} <= set(MODULES)
    assert any(m.startswith("logitops.functional") for m in MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_only_the_upper_layers_import_functional(module):
    if module in ABOVE_FUNCTIONAL or module.startswith("logitops.functional"):
        return
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    is_package = not path.exists()
    if is_package:
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    offending = _imports_functional(path.read_text(), module, is_package)
    assert not offending, f"{module} imports logitops.functional: {offending}"


@pytest.mark.parametrize(
    "module,source",
    [
        ("logitops._chunking", "from .functional import cross_entropy\n"),
        ("logitops._chunking", "from . import functional as lf\n"),
        ("logitops._chunking", "def f():\n    from .functional import _helper\n"),
        ("logitops.ops.sampling", "from ..functional.sampling import sample\n"),
        ("logitops.ops", "from ..functional import sample\n"),
        ("logitops.ops._common", "import logitops.functional\n"),
        ("logitops.ops._common", "from logitops import functional\n"),
    ],
)
def test_the_check_finds_relative_absolute_and_local_imports(module, source):
    is_package = module == "logitops.ops"
    assert _imports_functional(source, module, is_package)


def test_the_check_passes_unrelated_imports():
    source = (
        "from .ops import cross_entropy\nfrom . import _validation\nimport torch.nn.functional\n"
    )
    assert not _imports_functional(source, "logitops._chunking", is_package=False)


# One interpreter imports torch (and the optional libraries) once, then forks a child per order;
# each child starts with no logitops module loaded, so an import cycle or an order dependence
# inside logitops fails there as in a fresh interpreter, without paying torch's import each time.
_FORKING_IMPORTER = r"""
import importlib, json, os, sys, traceback
for name in sys.argv[2:]:
    importlib.import_module(name)
assert not any(m == "logitops" or m.startswith("logitops.") for m in sys.modules)
results = {}
for first, order in json.loads(sys.argv[1]).items():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code, message = 0, ""
        try:
            for module in order:
                importlib.import_module(module)
        except BaseException:
            code, message = 1, traceback.format_exc()
        os.write(write_end, message.encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    results[first] = [os.waitstatus_to_exitcode(status), message]
print(json.dumps(results))
"""


def _run_forking_importer(orders: dict[str, list[str]], preload: list[str], env=None) -> dict:
    """{first: [exit code, traceback]} of each order, from one _FORKING_IMPORTER run."""
    result = subprocess.run(
        [sys.executable, "-c", _FORKING_IMPORTER, json.dumps(orders), *preload],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@functools.lru_cache(maxsize=1)
def _import_orders_results() -> dict[str, list]:
    """Each module imported first, then the others in reverse order."""
    orders = {
        first: [first, *(m for m in reversed(IMPORTABLE) if m != first)] for first in IMPORTABLE
    }
    return _run_forking_importer(
        orders, ["torch", *(OPTIONAL[m] for m in IMPORTABLE if m in OPTIONAL)]
    )


@pytest.mark.parametrize("first", IMPORTABLE)
def test_each_module_imports_first_in_a_fresh_interpreter(first):
    """Each module first, then the others in reverse order: no order depends on another
    module having been imported before."""
    code, message = _import_orders_results()[first]
    assert code == 0, message


def test_the_forked_import_check_can_fail(tmp_path):
    """A module that imports one not loaded yet fails in the child as in a fresh interpreter."""
    (tmp_path / "layering_probe.py").write_text("import logitops.no_such_module\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    exit_code, message = _run_forking_importer({"probe": ["layering_probe"]}, ["torch"], env)[
        "probe"
    ]
    assert exit_code == 1 and "no_such_module" in message


def test_the_version_has_one_source():
    """pyproject.toml's version, read through the installed metadata; no copy in the package."""
    import importlib.metadata
    import re

    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert logitops.__version__ == importlib.metadata.version("logitops") == version
    assert logitops.build_info()["version"] == version
    assert f'"{version}"' not in (PACKAGE / "__init__.py").read_text()
