"""The operator's web console at ``/admin`` (see :mod:`.app`)."""

from __future__ import annotations

from .app import CONTACT_ACTIONS, Console, console_routes
from .auth import HASH_ENV, PASSWORD_ENV, Operator, hash_password

__all__ = ["CONTACT_ACTIONS", "HASH_ENV", "PASSWORD_ENV", "Console", "Operator",
           "console_routes", "hash_password"]
