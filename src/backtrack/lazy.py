"""Package facades whose names load on first use (PEP 562).

``backtrack.engine``, ``backtrack.models`` and ``backtrack.rl`` re-export their public names
this way, so that importing one light module of a package (the settings' declarations, the
machine's CPU name, a training config) does not import torch, transformers or gymnasium, and
``backtrack --help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """The ``__getattr__``, ``__dir__`` and ``__all__`` of a package whose globals are
    ``namespace``: ``exports`` maps each module to the public names it defines, as an import
    statement would; a module is imported when one of its names is first used, and the name
    is then an ordinary attribute of the package.

    >>> namespace = {"__name__": "example"}
    >>> getattr_, dir_, all_ = lazy_exports(namespace, {"textwrap": ("dedent", "indent")})
    >>> getattr_("dedent")("  x"), all_
    ('x', ['dedent', 'indent'])
    >>> "dedent" in namespace, dir_()
    (True, ['__name__', 'dedent', 'indent'])
    """
    package = namespace["__name__"]
    home = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *home})

    return __getattr__, __dir__, sorted(home)
