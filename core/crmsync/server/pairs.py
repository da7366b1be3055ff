"""``crmsync --pairs DIR serve``: one server for several CRM ↔ ESP pairs.

Each pair is a whole :class:`~crmsync.server.service.RealtimeService` of its own — its
configuration, connectors, secrets (under its prefix), state store and worker — so one
pair's vendor outage or exhausted quota holds up only that pair's worker. This app only
routes::

    GET|POST /hooks/<pair>/{esp|crm}[/...]   that pair's inbound endpoints
    GET      /healthz                        the process is up
    GET      /readyz                         every pair's readiness (503 when no pair
                                             is ready: one pair's trouble must not take
                                             the others out of the load balancer)
    GET      /metrics                        every pair's metrics, labelled ``pair``

The subscription form, ``POST /send`` and the console are a pair's own: run ``crmsync
--pairs DIR --pair NAME console`` (or ``send``, ``subscribe``) for one pair.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from .app import build_app, readiness

if TYPE_CHECKING:
    from ..config import Config
    from .service import RealtimeService

__all__ = ["PairsService"]

log = logging.getLogger(__name__)


class PairsService:
    """Several pairs' services behind one app; ``serve`` and ``ServerThread`` run it as
    they run one :class:`RealtimeService`."""

    def __init__(self, services: dict[str, RealtimeService]) -> None:
        if not services:
            raise ValueError("no pair to serve")
        self.services = services
        self.app = self._build()

    @property
    def config(self) -> Config:
        """The server settings the process itself follows (shutdown timeout): the first
        pair's."""
        return next(iter(self.services.values())).config

    def _build(self) -> Starlette:
        from ..metrics_file import by_pair

        routes: list[BaseRoute] = []
        for name, service in self.services.items():
            routes += build_app(service, hooks_prefix=f"/hooks/{name}", only_hooks=True).routes

        async def unknown_pair(request: Request) -> Response:
            known = ", ".join(self.services)
            return PlainTextResponse(
                f"no pair {request.path_params['pair']!r} here (pairs: {known}): post to "
                "/hooks/<pair>/esp or /hooks/<pair>/crm\n", status_code=404)

        async def healthz(request: Request) -> Response:
            return PlainTextResponse("ok\n")

        async def readyz(request: Request) -> Response:
            pairs = {name: await run_in_threadpool(readiness, service)
                     for name, service in self.services.items()}
            ready = any(item["ready"] for item in pairs.values())
            body: dict[str, Any] = {"ready": ready,
                                    "pairs_ready": sum(item["ready"] for item in pairs.values()),
                                    "pairs": pairs}
            return JSONResponse(body, status_code=200 if ready else 503)

        async def metrics(request: Request) -> Response:
            registry = by_pair({name: service.metrics.registry
                                for name, service in self.services.items()})
            from prometheus_client import generate_latest

            data = await run_in_threadpool(generate_latest, registry)
            return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")

        routes += [
            Route("/hooks/{pair}/{rest:path}", unknown_pair, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
        return Starlette(routes=routes)

    @property
    def accepting(self) -> bool:
        return any(service.accepting for service in self.services.values())

    def start(self) -> PairsService:
        for service in self.services.values():
            service.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting; let every pair's worker finish the events in hand (all of them
        at once: the timeout is not spent pair after pair)."""
        for service in self.services.values():
            service.accepting = False
            service.worker.stop_soon()
        return all([service.stop(timeout) for service in self.services.values()])

    def close(self) -> None:
        for name, service in self.services.items():
            try:
                service.close()
            except Exception:  # closing one pair must not leave the others open
                log.exception("closing pair %s failed", name)
