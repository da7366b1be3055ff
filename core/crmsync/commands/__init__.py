"""Commands registered on the ``crmsync`` group, one module each."""

from __future__ import annotations

from . import sync  # noqa: F401
