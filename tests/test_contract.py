"""docs/contract.md stays true: every error row has a bad call that raises it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

CONTRACT = Path(__file__).parents[1] / "docs" / "contract.md"


def error_rows():
    rows = []
    for line in CONTRACT.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[3].endswith("Error") and cells[4].startswith("test_"):
            rows.append(tuple(cells))
    return rows


ROWS = error_rows()


def test_contract_has_rows_for_every_family():
    assert len(ROWS) >= 25
    families = {
        "test_cross_entropy",
        "test_bce_with_logits",
        "test_sampling",
        "test_penalties",
        "test_speculative",
        "test_beam_search",
        "test_distillation",
        "test_linear_cross_entropy",
        "test_distributed",
        "test_token_logprobs",
        "test_integration_transformers",
        "test_probs",
        "test_logprobs",
        "test_warpers",
    }
    assert {row[4] for row in ROWS} == families


@pytest.mark.parametrize(
    "function,argument,condition,exception,module",
    ROWS,
    ids=[f"{r[0]}-{r[1]}-{i}" for i, r in enumerate(ROWS)],
)
def test_every_error_row_is_tested(function, argument, condition, exception, module):
    bad_calls = importlib.import_module(module).BAD_CALLS
    assert any(arg == argument and exc.__name__ == exception for arg, exc, _ in bad_calls), (
        f"{module}.BAD_CALLS has no call for {function}({argument}) raising {exception}"
    )
