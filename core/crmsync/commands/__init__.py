"""Commands registered on the ``crmsync`` group, one module each.

Every module of this package is imported, and registers its commands on import.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
