"""The harness every vendor emulator shares.

An emulator is an ASGI app over an in-memory store that speaks one vendor's API. The
harness adds what every emulator needs: a control API under ``/_emulator/`` (reset,
seed, state, request counts, fault injection, simulated unsubscribe), request
counting per method and path template, injected faults, and a server that runs it on
127.0.0.1 in a background thread (with TLS from a throw-away CA when asked).

Control API::

    POST /_emulator/reset                       empty the store
    POST /_emulator/seed        {"contacts": N, "seed": S}
    GET  /_emulator/state                       every contact, vendor-neutral JSON
    GET  /_emulator/requests                    {"METHOD /path/{template}": count}
    DELETE /_emulator/requests                  zero the counters
    POST /_emulator/faults      {"latency_ms", "error_rate", "error_status", "error_count",
                                 "drop_count", "drop_after", "expire_sessions": true,
                                 "rate_limit": calls/s, "retry_after": s (on a 429)}
    POST /_emulator/unsubscribe {"email", "list"}   (ESP emulators)
    POST /_emulator/update      {"email", "fields": {...}}  (CRM emulators: a user edits a record)
    GET  /_emulator/profile                     how to connect: {"connector", "settings",
                                                "secrets" (throw-away), "fields", "lists"}
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["Emulator", "EmulatorServer", "Faults", "free_port", "serving"]


class Faults:
    """Faults injected into every vendor call (the control API is never affected)."""

    def __init__(self) -> None:
        self.latency_ms = 0.0
        self.error_rate = 0.0
        self.error_status = 503
        self.error_count = 0  # errors still to give, whatever the rate
        # connections still to cut in the middle of the answer; ``drop_after``: the call
        # is carried out first (the answer is lost, not the request)
        self.drop_count = 0
        self.drop_after = True
        self.rate_limit: float | None = None
        # seconds a 429 (injected, or over rate_limit) asks the client to wait: the
        # Retry-After header; None sends none (the client backs off on its own)
        self.retry_after: float | None = None
        self._rng = random.Random(0)
        self._window: list[float] = []
        self._lock = threading.Lock()

    def update(self, values: dict[str, Any]) -> None:
        allowed = {"latency_ms", "error_rate", "error_status", "error_count", "rate_limit",
                   "drop_count", "drop_after", "retry_after"}
        unknown = set(values) - allowed - {"expire_sessions"}
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        for key in allowed & set(values):
            setattr(self, key, values[key])

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def _take(self, name: str) -> bool:
        """Use up one of the faults of this kind still to give (``error_count``...)."""
        with self._lock:
            left = getattr(self, name)
            if left > 0:
                setattr(self, name, left - 1)
                return True
            return False

    def should_fail(self) -> bool:
        if self._take("error_count"):
            return True
        with self._lock:
            return self.error_rate > 0 and self._rng.random() < self.error_rate

    def should_drop(self) -> bool:
        return self._take("drop_count")

    def over_rate(self) -> bool:
        """True when this call exceeds the configured calls per second."""
        if not self.rate_limit:
            return False
        with self._lock:
            now = time.monotonic()
            self._window = [t for t in self._window if now - t < 1.0]
            if len(self._window) >= self.rate_limit:
                return True
            self._window.append(now)
            return False


class Emulator(ABC):
    """Base of a vendor emulator: subclasses give routes, a store and its neutral view."""

    name: ClassVar[str]

    def __init__(self, *, contacts: int = 0, seed: int = 0) -> None:
        self.faults = Faults()
        self.requests: Counter[str] = Counter()
        self.lock = threading.RLock()
        self.base_url = ""  # set by EmulatorServer once it listens
        self.ca_path: str | None = None  # the CA to trust when served with TLS
        self.reset()
        if contacts:
            self.seed(contacts, seed)
        self._app: Starlette | None = None

    # -- what a vendor emulator provides ------------------------------------------------
    @abstractmethod
    def routes(self) -> list[BaseRoute]:
        """The vendor's API routes."""

    @abstractmethod
    def reset(self) -> None:
        """Empty the store (lists and configuration may be kept at their defaults)."""

    @abstractmethod
    def seed(self, contacts: int, seed: int) -> None:
        """Add ``contacts`` generated contacts, reproducibly from ``seed``."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """``{"contacts": [{"email", "ids", "fields", "lists": {id: {"status", "groups"}}}]}``."""

    def expire_sessions(self) -> None:
        """Invalidate every session / token issued so far (fault injection)."""

    def unsubscribe(self, email: str, list_id: str) -> dict[str, Any]:
        """Simulate a recipient clicking "unsubscribe" (ESP emulators override)."""
        raise NotImplementedError(f"{self.name} has no recipients to unsubscribe")

    def update_contact(self, email: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Change a contact's fields as a user of the vendor's UI would (CRM emulators:
        ``{"HasOptedOutOfEmail": "true"}`` opts out; the modification stamp moves)."""
        raise NotImplementedError(f"{self.name} cannot update contacts from the control API")

    def import_files(self) -> dict[str, Any]:
        """ESP emulators with a file space: import every complete file dropped in it."""
        raise NotImplementedError(f"{self.name} imports no files")

    def export_unsubscribers(self) -> dict[str, Any]:
        """ESP emulators with a file space: write the unsubscription export to it."""
        raise NotImplementedError(f"{self.name} exports no files")

    def demo_profile(self) -> dict[str, Any]:
        """How to point the connector at this (running) emulator, for tests and the demo.

        ``{"settings": {...}, "secrets": {"CRMSYNC_X_PASSWORD": "..."}, "fields": {crm: esp},
        "lists": [ListMapping-shaped dicts]}``; ``base_url`` / ``ca_path`` are set by then.
        """
        raise NotImplementedError(f"{self.name} has no demo profile")

    def fault_response(self, status: int) -> Response:
        """The body this vendor sends with an injected error status."""
        return JSONResponse({"error": "injected fault", "status": status}, status_code=status)

    def control_routes(self) -> list[BaseRoute]:
        """Vendor-specific control endpoints, mounted under ``/_emulator/``."""
        return []

    # -- the harness ------------------------------------------------------------------
    def app(self) -> ASGIApp:
        if self._app is None:
            control = [
                Route("/_emulator/reset", self._reset, methods=["POST"]),
                Route("/_emulator/seed", self._seed, methods=["POST"]),
                Route("/_emulator/state", self._state, methods=["GET"]),
                Route("/_emulator/requests", self._requests, methods=["GET", "DELETE"]),
                Route("/_emulator/faults", self._faults, methods=["POST", "DELETE"]),
                Route("/_emulator/unsubscribe", self._unsubscribe, methods=["POST"]),
                Route("/_emulator/update", self._update, methods=["POST"]),
                Route("/_emulator/profile", self._profile, methods=["GET"]),
                *self.control_routes(),
            ]
            self._vendor_routes = self.routes()
            self._app = Starlette(routes=control + self._vendor_routes)
        # uvicorn (and any server that sniffs the interface) reads a bound method as an
        # ASGI2 app, its __call__ being no coroutine function: a plain coroutine function
        # is ASGI3 wherever the app is served
        middleware = self._middleware

        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            await middleware(scope, receive, send)

        return asgi

    def template_of(self, scope: Scope) -> str:
        for route in self._vendor_routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(getattr(route, "path", scope["path"]))
        return str(scope["path"])

    async def _middleware(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._app is not None
        if scope["type"] != "http" or scope["path"].startswith("/_emulator/"):
            await self._app(scope, receive, send)
            return
        with self.lock:
            self.requests[f"{scope['method']} {self.template_of(scope)}"] += 1
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        if self.faults.over_rate():
            await self._fault(429)(scope, receive, send)
            return
        if self.faults.should_fail():
            await self._fault(int(self.faults.error_status))(scope, receive, send)
            return
        if self.faults.should_drop():
            await self._drop(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _fault(self, status: int) -> Response:
        response = self.fault_response(status)
        if status == 429 and self.faults.retry_after is not None:
            response.headers["Retry-After"] = f"{self.faults.retry_after:g}"
        return response

    async def _drop(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Cut the connection in the middle of the answer (a reset, a proxy timing out).

        With ``drop_after`` the vendor carries the call out and the first half of its
        real answer arrives before the cut; otherwise the call is not carried out."""
        assert self._app is not None
        start: dict[str, Any] = {"type": "http.response.start", "status": 200,
                                 "headers": [(b"content-type", b"application/json"),
                                             (b"content-length", b"4096")]}
        body = b'{"'
        if self.faults.drop_after:
            answer: list[dict[str, Any]] = []

            async def keep(message: Any) -> None:
                answer.append(message)

            await self._app(scope, receive, keep)  # the vendor acts; its answer is lost
            whole = b"".join(m.get("body", b"") for m in answer
                             if m["type"] == "http.response.body")
            starts = [m for m in answer if m["type"] == "http.response.start"]
            if starts and len(whole) > 1:
                headers = [(k, v) for k, v in starts[0].get("headers", [])
                           if k.lower() != b"content-length"]
                start = {**starts[0], "headers": [
                    *headers, (b"content-length", str(len(whole)).encode())]}
                body = whole[:len(whole) // 2]
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": True})
        # returning with the body incomplete makes the server close the connection

    async def _reset(self, request: Request) -> Response:
        with self.lock:
            self.reset()
            self.requests.clear()
            self.faults.clear()
        return JSONResponse({"ok": True})

    async def _seed(self, request: Request) -> Response:
        body = await _json_body(request)
        with self.lock:
            self.seed(int(body.get("contacts", 100)), int(body.get("seed", 0)))
        return JSONResponse({"ok": True})

    async def _state(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse(self.state())

    async def _requests(self, request: Request) -> Response:
        with self.lock:
            if request.method == "DELETE":
                self.requests.clear()
            return JSONResponse(dict(self.requests))

    async def _faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.faults.clear()
            return JSONResponse({"ok": True})
        body = await _json_body(request)
        try:
            self.faults.update(body)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if body.get("expire_sessions"):
            with self.lock:
                self.expire_sessions()
        return JSONResponse({"ok": True})

    async def _profile(self, request: Request) -> Response:
        try:
            with self.lock:
                profile = self.demo_profile()
        except NotImplementedError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse({"connector": self.name, **profile})

    async def _update(self, request: Request) -> Response:
        body = await _json_body(request)
        try:
            with self.lock:
                result = self.update_contact(str(body["email"]), dict(body.get("fields", {})))
        except KeyError as exc:
            return JSONResponse({"error": f"missing or unknown {exc}"}, status_code=404)
        except NotImplementedError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(result)

    async def _unsubscribe(self, request: Request) -> Response:
        body = await _json_body(request)
        try:
            with self.lock:
                result = self.unsubscribe(str(body["email"]), str(body["list"]))
        except KeyError as exc:
            return JSONResponse({"error": f"missing or unknown {exc}"}, status_code=404)
        except NotImplementedError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(result)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    import json

    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmulatorServer:
    """Runs an ASGI app under uvicorn on 127.0.0.1 in a background thread.

    With ``tls=True`` it serves HTTPS with a certificate from a throw-away CA made at
    start-up; ``ca_path`` is that CA's PEM file for clients to trust.
    """

    def __init__(self, app: ASGIApp | Emulator, *, host: str = "127.0.0.1", port: int = 0,
                 tls: bool = False, workdir: Path | None = None) -> None:
        self.emulator = app if isinstance(app, Emulator) else None
        self._asgi = app.app() if isinstance(app, Emulator) else app
        self.host = host
        self.port = port or free_port()
        self.tls = tls
        self.ca_path: str | None = None
        self._workdir = workdir
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def _tls_files(self) -> dict[str, str]:
        import tempfile

        import trustme

        folder = self._workdir or Path(tempfile.mkdtemp(prefix="crmsync-tls-"))
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_path = str(folder / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        key_path, cert_path = folder / "server.key", folder / "server.pem"
        cert.private_key_pem.write_to_path(str(key_path))
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(cert_path), append=True)
        return {"ssl_keyfile": str(key_path), "ssl_certfile": str(cert_path)}

    def start(self) -> EmulatorServer:
        extra: dict[str, Any] = self._tls_files() if self.tls else {}
        config = uvicorn.Config(self._asgi, host=self.host, port=self.port, log_level="warning",
                                lifespan="off", access_log=False, interface="asgi3", **extra)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True,
                                        name=f"emulator-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not start on {self.url}")
            time.sleep(0.01)
        if self.emulator is not None:
            self.emulator.base_url = self.url
            self.emulator.ca_path = self.ca_path
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(app: ASGIApp | Emulator, **kwargs: Any) -> Iterator[EmulatorServer]:
    """``with serving(emulator) as server: ... server.url``."""
    server = EmulatorServer(app, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()
