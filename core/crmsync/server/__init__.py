"""``crmsync serve``: inbound webhooks, the subscription form, health and metrics.

:class:`RealtimeService` wires the configured connectors, the state store and the
real-time worker (:mod:`crmsync.engine.realtime`) to the Starlette app of
:mod:`crmsync.server.app`; :func:`serve` runs it under uvicorn until SIGTERM.
"""

from __future__ import annotations

from .app import Inbox, NullInbox, StoreInbox, build_app, dedupe_key
from .metrics import Metrics
from .security import CsrfTokens, EndpointKeys, IpGuard, signature_ok
from .service import Endpoint, RealtimeService, ServerThread, parse_listen, serve

__all__ = [
    "CsrfTokens",
    "Endpoint",
    "EndpointKeys",
    "Inbox",
    "IpGuard",
    "Metrics",
    "NullInbox",
    "RealtimeService",
    "ServerThread",
    "StoreInbox",
    "build_app",
    "dedupe_key",
    "parse_listen",
    "serve",
    "signature_ok",
]
