"""Routing of DTensor arguments of the public losses to logitops.dtensor.

The public functions (logitops.functional) check their tensor arguments here first; when one is a
``torch.distributed.tensor.DTensor`` they hand the whole call to the handler that
logitops.dtensor registered under the function's name. A DTensor can exist only once
``torch.distributed.tensor`` has been imported, so the check looks the module up in
``sys.modules`` (free for plain tensors, and traceable by ``torch.compile``) instead of importing
it: ``import logitops`` stays without the cost of importing DTensor. logitops.dtensor, which sits
above functional, is imported by name the first time a DTensor arrives.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

_HANDLERS: dict[str, Callable] = {}


def register_dtensor_handler(name: str, handler: Callable) -> None:
    """Make ``handler`` take the calls of the public function ``name`` that get a DTensor."""
    _HANDLERS[name] = handler


def dtensor_handler(name: str, *args) -> Callable | None:
    """The handler of ``name`` when any of ``args`` is a DTensor, else None."""
    module = sys.modules.get("torch.distributed.tensor")
    if module is None:
        return None
    dtensor = module.DTensor
    if not any(isinstance(arg, dtensor) for arg in args):
        return None
    if name not in _HANDLERS:
        importlib.import_module("logitops.dtensor")  # registers the handlers
    return _HANDLERS[name]
