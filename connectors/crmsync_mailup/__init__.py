"""crmsync's MailUp connector: the ESP side of a sync, over MailUp's REST API v1.1,
webhooks, batch files and the sending APIs. The emulator is in
:mod:`crmsync_mailup.emulator`."""

from __future__ import annotations

from .connector import MailUpConnector
from .sending import Address, TransactionalMessage
from .settings import MailUpSettings
from .webhooks import encrypt_payload, rc4

__all__ = [
    "Address",
    "MailUpConnector",
    "MailUpSettings",
    "TransactionalMessage",
    "encrypt_payload",
    "rc4",
]
