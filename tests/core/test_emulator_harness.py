"""The emulator harness (``crmsync.testing``) as a third-party emulator author uses it."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crmsync.emulator import Emulator, free_port


class TinyEmulator(Emulator):
    """An emulator that only gives routes and a store: no ASGI plumbing of its own."""

    name = "tiny"

    def routes(self) -> list[BaseRoute]:
        async def ping(request: Request) -> Response:
            return JSONResponse({"pong": len(self.contacts)})

        return [Route("/api/ping", ping, methods=["GET"])]

    def reset(self) -> None:
        self.contacts: list[str] = []

    def seed(self, contacts: int, seed: int) -> None:
        self.contacts += [f"c{n}@example.com" for n in range(contacts)]

    def state(self) -> dict[str, Any]:
        return {"contacts": [{"email": email} for email in self.contacts]}


def test_an_emulator_app_is_served_by_a_plain_uvicorn_as_it_sniffs_it() -> None:
    """Issue 19: the ASGI3 shim lives in the base, so an emulator served by any ASGI server
    with its default interface detection (uvicorn's ``interface="auto"``) answers, with
    the harness's request counting, without the subclass wrapping its own app."""
    emulator = TinyEmulator(contacts=3)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(emulator.app(), host="127.0.0.1", port=port,
                                           log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        answer = httpx.get(f"http://127.0.0.1:{port}/api/ping", timeout=5)
        counts = httpx.get(f"http://127.0.0.1:{port}/_emulator/requests", timeout=5).json()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert answer.status_code == 200 and answer.json() == {"pong": 3}
    assert counts == {"GET /api/ping": 1}


def test_a_closing_factory_closes_what_it_made_in_order_even_on_failure() -> None:
    from crmsync.testing import closing_factory

    closed: list[str] = []
    try:
        with closing_factory(lambda name: name.upper(), closed.append) as make:
            assert make("a") == "A" and make("b") == "B"
            raise RuntimeError("the test failed")
    except RuntimeError:
        pass
    assert closed == ["A", "B"]
