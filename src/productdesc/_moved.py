"""Old import paths of moved modules: they keep working for one release, and warn.

A module that moved leaves a stub at its old path whose module ``__getattr__`` (PEP 562) is
:func:`forward`'s: ``from productdesc.describe import Describer`` still works, and says where
the name lives now.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

#: The release that drops the old paths.
REMOVED_IN = "0.2"

_MISSING = object()


def forward(old: str, *new: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that returns the attribute of the first module in
    ``new`` that has it, with a ``DeprecationWarning`` naming its new path."""

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):  # not the import machinery probing (__path__, ...)
            for module in new:
                value = getattr(importlib.import_module(module), name, _MISSING)
                if value is not _MISSING:
                    warnings.warn(
                        f"{old}.{name} moved to {module}.{name}; the old path goes in {REMOVED_IN}",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    return value
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
