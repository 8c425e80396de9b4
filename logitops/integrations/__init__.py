"""Integrations with other libraries. Each submodule imports its library, which is an optional
dependency: ``import logitops.integrations.transformers`` needs transformers installed; this
package itself imports nothing."""

from __future__ import annotations

__all__: list[str] = []
