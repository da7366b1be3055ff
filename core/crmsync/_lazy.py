"""Public names imported on first use (PEP 562), for the curated namespaces.

``crmsync`` and ``crmsync.testing`` export names from many modules; importing them all
would make ``import crmsync`` (and every ``crmsync --version``) pay for httpx, SQLAlchemy
and pydantic, and the pytest plugin pay for Starlette and uvicorn.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


def exports(package: str, where: Mapping[str, str], namespace: dict[str, Any]
            ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name of ``where`` is imported
    from its module (relative to ``package``, ``".model"``) when first asked for, then kept
    in ``namespace`` (the package's globals)."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
