"""Lazy package exports: a package lists `name -> module` and imports the module only when the name is used.

Why: `import imagebert.data` (or `.training`, `.extraction`) must not pull in torch and transformers for tools
that only read files, such as data import and LAIT workers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package` that resolves `exports[name]` on first use."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
