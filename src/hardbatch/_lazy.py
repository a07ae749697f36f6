"""The one lazy-import mechanism: names a package exports without importing their module up front.

Used where an import is heavy or optional (sentence-transformers takes seconds to import; the Triton
kernels and faiss are extras), so ``import hardbatch`` and ``import hardbatch.<package>`` stay cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["import_attribute", "lazy_getattr"]


def import_attribute(spec: str) -> Any:
    """``"package.module:name"`` → the object (imports the module).

    Example:
        >>> import_attribute("os.path:join")("a", "b")
        'a/b'
    """
    module, _, attribute = spec.partition(":")
    if not attribute:
        raise RuntimeError(f"lazy import spec {spec!r} must read 'module:attribute'")
    return getattr(importlib.import_module(module), attribute)


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` that imports ``exports[name]`` (a module path) on first access.

    Args:
        package: the package's ``__name__``, for the error message.
        exports: exported name → the module that defines it.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return import_attribute(f"{exports[name]}:{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
