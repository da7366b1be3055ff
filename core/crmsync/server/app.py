"""The ASGI app of ``crmsync serve`` (Starlette).

Routes::

    GET|POST /hooks/{esp|crm}/{secret}[/...]   inbound events (secret in the path)
    GET|POST /hooks/{esp|crm}[/...]            the same, secret in X-Crmsync-Secret
    GET      /healthz /readyz /metrics
    GET|POST /subscribe                        the multi-list subscription form
    POST     /send                             send a message (Authorization: Bearer)
    GET|POST /admin/...  /go/{esp|contact}     the operator's console (server/console/),
                                               only when an operator password is set

An inbound call is checked in this order, and refused with nothing stored at the
first failure: source address (401), declared size (413), endpoint secret (401),
actual size (413), body signature (401), the connector's own checks and decoding
(``EventRejected``: its status, 400 or 401). Only then is the event stored in the
inbox, and only once it is stored is the sender acknowledged, in the form it expects
(``connector.event_ack``). A redelivered event (same ``event_id``, or the same bytes)
is acknowledged again but stored once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ..actions import ConsentRefused
from ..errors import (
    ConfigError,
    CrmsyncError,
    DataError,
    EventRejected,
    RemoteError,
)
from ..model import Change, InboundRequest
from ..state import StateStore
from ..state.queues import OnStored
from .form import FORM_HEADERS, parse_form, render_done, render_form
from .security import RateWindow, constant_equal, signature_ok

if TYPE_CHECKING:
    from .service import RealtimeService

__all__ = ["Inbox", "NullInbox", "StoreInbox", "build_app", "dedupe_key", "readiness"]

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Crmsync-Secret"  # noqa: S105 - a header name
CSRF_COOKIE = "crmsync_csrf"
_METHODS = ("GET", "POST")
_FORM_MAX_BYTES = 16 * 1024
_PLAIN = {"X-Content-Type-Options": "nosniff"}


class Inbox(Protocol):
    """Where accepted events go before the sender hears "OK"."""

    def put(self, endpoint: str, dedupe_key: str, changes: Sequence[Change]) -> bool:
        """Store durably; ``False`` when this event was stored before."""
        ...


class _Put:
    def __init__(self, endpoint: str, key: str, changes: Sequence[Change]) -> None:
        self.item = (endpoint, key, changes)
        self.done = threading.Event()
        self.stored = False
        self.error: BaseException | None = None


class StoreInbox:
    """The state store's inbox table (durable: SQLite or PostgreSQL), with group commit.

    Concurrent ``put`` calls share transactions: the first caller commits what is
    waiting, in one transaction, while later callers queue behind it; each returns only
    once its own event is committed. One event alone costs one transaction, as before.
    """

    def __init__(self, store: StateStore, *, on_stored: OnStored | None = None) -> None:
        self.store = store
        self.on_stored = on_stored  # run in the storing transaction (crmsync worker's jobs)
        self._lock = threading.Lock()
        self._waiting: list[_Put] = []
        self._writing = False

    def put(self, endpoint: str, dedupe_key: str, changes: Sequence[Change]) -> bool:
        mine = _Put(endpoint, dedupe_key, changes)
        with self._lock:
            self._waiting.append(mine)
            leader = not self._writing
            self._writing = True
        if leader:
            self._commit_waiting()
        mine.done.wait()
        if mine.error is not None:
            raise mine.error
        return mine.stored

    def _commit_waiting(self) -> None:
        while True:
            with self._lock:
                batch, self._waiting = self._waiting, []
                if not batch:
                    self._writing = False
                    return
            try:
                results = self.store.inbox_put_many([put.item for put in batch],
                                                    on_stored=self.on_stored)
            except BaseException as exc:  # every waiting caller hears of it
                for put in batch:
                    put.error = exc
                    put.done.set()
                continue
            for put, stored in zip(batch, results, strict=True):
                put.stored = stored
                put.done.set()


class NullInbox:
    """Stores nothing: the benchmark's floor, never a production setting."""

    def put(self, endpoint: str, dedupe_key: str, changes: Sequence[Change]) -> bool:
        return True


def dedupe_key(request: InboundRequest, changes: Sequence[Change]) -> str:
    """The events' own ids when every change has one, else a hash of the request."""
    ids = [change.event_id for change in changes]
    if ids and all(ids):
        key = "id:" + "|".join(cast(list[str], ids))
        if len(key) <= 200:
            return key
        return "ids:" + hashlib.sha256(key.encode()).hexdigest()
    digest = hashlib.sha256()
    for part in (request.method, request.path,
                 json.dumps(sorted(request.query), separators=(",", ":"))):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(request.body)
    return "body:" + digest.hexdigest()


def _reject(service: RealtimeService, side: str, status: int, message: str) -> Response:
    service.metrics.rejected.labels(side, str(status)).inc()
    log.info("refused a call to the %s endpoint (%d): %s", side, status, message)
    # the message may quote what the sender sent: plain text, never sniffed as HTML
    return PlainTextResponse(message + "\n", status_code=status, headers=_PLAIN)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` once it passes ``limit`` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


class _NotStored(Exception):
    """The state store could not take a decoded event (the cause says why)."""


def _accept_with(service: RealtimeService, side: str, connector: Any,
                 inbound: InboundRequest) -> str:
    changes = connector.decode_event(inbound)
    if not changes:
        return "ignored"
    try:
        stored = service.store_event(side, dedupe_key(inbound, changes), changes)
    except CrmsyncError as exc:
        raise _NotStored() from exc
    return "stored" if stored else "duplicate"


def _scalar(value: Any) -> str:
    """A JSON id or address: a string or a number (at most 64 digits), nothing else."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{type(value).__name__} where an id or address was expected")
    if isinstance(value, int):
        if abs(value) >= 10**64:
            raise ValueError("a number of more than 64 digits is not an id")
        return str(value)
    return value


def readiness(service: RealtimeService) -> dict[str, Any]:
    """What ``/readyz`` answers for one pair: ready, the inbox's depth, the problems."""
    problems = []
    if not service.accepting:
        problems.append("shutting down")
    if service.worker_expected and not service.worker.running:
        problems.append("the worker is not running")
    worker = service.worker
    if (worker.poll_enabled
            and worker.poll_failures >= service.config.server.ready_poll_failures):
        problems.append(f"the CRM poller failed {worker.poll_failures} times in a row "
                        f"(last: {worker.poll_error[:300]})")
    queue = None
    try:
        queue = service.store.inbox_pending_count()
        storage = service.storage_problem()
        if storage:
            problems.append(f"state store: {storage}")
    except CrmsyncError as exc:
        problems.append(f"state store: {exc}")
    return {"ready": not problems, "queue": queue, "problems": problems}


def build_app(service: RealtimeService, *, hooks_prefix: str = "/hooks",
              only_hooks: bool = False) -> Starlette:
    """The app for one configured CRM / ESP pair (see the module docstring).

    ``hooks_prefix``: where its inbound endpoints are (``/hooks/<pair>`` for one pair of
    a many-pairs deployment, :mod:`crmsync.server.pairs`); the connector still sees the
    path as ``/hooks/<side>/...``. ``only_hooks``: just those routes."""
    config = service.config.server
    limit = config.max_body_bytes

    form_rate = RateWindow(config.form_rate_per_minute)
    # A few threads take events in; many more only thrash on the GIL and the database.
    intake_limiter = anyio.CapacityLimiter(config.intake_threads)

    def _accept(side: str, connector: Any, inbound: InboundRequest) -> str:
        return _accept_with(service, side, connector, inbound)

    async def hook(request: Request) -> Response:
        side = request.path_params["side"]
        endpoint = service.endpoints.get(side)
        if endpoint is None:
            return PlainTextResponse(
                f"no {side} endpoint here: set CRMSYNC_HOOK_SECRET_{side.upper()} to enable "
                "it\n" if side in ("esp", "crm") else "not found\n", status_code=404)
        if request.method not in _METHODS:
            return PlainTextResponse("use GET or POST\n", status_code=405)
        if not service.accepting:
            return PlainTextResponse("shutting down: send again later\n", status_code=503,
                                     headers={"Retry-After": "5"})
        peer = request.client.host if request.client else ""
        client = service.ip_guard.client(peer, request.headers.get("x-forwarded-for", ""))
        if not service.ip_guard.allowed(client):
            return _reject(service, side, 401, f"source address {client} is not allowed")
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return _reject(service, side, 400, "malformed Content-Length")
            if int(declared) > limit:
                return _reject(service, side, 413, f"body over {limit} bytes")
        rest = request.path_params.get("rest", "")
        header_secret = request.headers.get(SECRET_HEADER)
        secret = endpoint.keys.secret or ""
        if header_secret is not None:
            authentic = constant_equal(header_secret, secret)
            path = f"/hooks/{side}" + (f"/{rest}" if rest else "")
        else:
            given, _, tail = rest.partition("/")
            authentic = bool(given) and constant_equal(given, secret)
            path = f"/hooks/{side}" + (f"/{tail}" if tail else "")
        if not authentic:
            return _reject(service, side, 401, "wrong or missing endpoint secret")
        body = await _read_body(request, limit)
        if body is None:
            return _reject(service, side, 413, f"body over {limit} bytes")
        if endpoint.keys.signing_key:
            signature = request.headers.get(config.signature_header, "")
            if not signature_ok(endpoint.keys.signing_key, body, signature):
                return _reject(service, side, 401,
                               f"missing or wrong {config.signature_header} signature")
        hidden = {SECRET_HEADER.lower(), "cookie"}
        inbound = InboundRequest(
            method=cast(Any, request.method), path=path,
            url=service.ip_guard.public_url(peer, str(request.url), request.headers),
            headers={k: v for k, v in request.headers.items() if k.lower() not in hidden},
            query=request.query_params.multi_items(), body=body, client=client)
        connector = endpoint.connector
        try:
            # decoding may call the vendor (a record read back): off the event loop, and
            # in the same hop as storing
            outcome = await anyio.to_thread.run_sync(_accept, side, connector, inbound,
                                                    limiter=intake_limiter)
        except EventRejected as exc:
            status = exc.status if exc.status in (400, 401, 403, 413, 422) else 400
            return _reject(service, side, status, str(exc))
        except RemoteError as exc:
            log.warning("decoding a %s event needed the vendor, which failed: %s", side, exc)
            return PlainTextResponse("cannot decode the event now: send again later\n",
                                     status_code=503, headers={"Retry-After": "30"})
        except (ValueError, TypeError, KeyError, IndexError, LookupError, RecursionError,
                UnicodeError) as exc:
            # a decoder tripping over what it was sent (JSON nested 50,000 deep, a field
            # of the wrong type): the body is malformed, not the server broken
            return _reject(service, side, 400, f"malformed {side} event: "
                           f"{type(exc).__name__}")
        except _NotStored as exc:
            log.error("could not store a %s event: %s", side, exc.__cause__)
            return PlainTextResponse("cannot store the event now: send again later\n",
                                     status_code=503, headers={"Retry-After": "30"})
        except Exception:
            log.exception("the %s connector failed to decode an event", side)
            return PlainTextResponse("internal error decoding the event\n", status_code=500)
        {"stored": service.metrics.received, "duplicate": service.metrics.duplicates,
         "ignored": service.metrics.ignored}[outcome].labels(side).inc()
        status, content_type, ack = connector.event_ack(inbound)
        return Response(ack, status_code=status, media_type=content_type)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        body = await run_in_threadpool(readiness, service)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    async def metrics(request: Request) -> Response:
        data = await run_in_threadpool(service.metrics.render)
        return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")

    def _form_page(request: Request, html: str, status: int = 200, token: str = ""
                   ) -> Response:
        response = HTMLResponse(html, status_code=status, headers=FORM_HEADERS)
        if token:
            response.set_cookie(CSRF_COOKIE, token, max_age=int(service.csrf.max_age_s),
                                path="/subscribe", httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        return response

    async def subscribe_form(request: Request) -> Response:
        if not config.form:
            return PlainTextResponse("the subscription form is off ([server] form)\n",
                                     status_code=404)
        lists = service.config.lists
        title = config.form_title
        if request.method == "GET":
            token = service.csrf.issue()
            return _form_page(request, render_form(title, lists, token), token=token)
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > _FORM_MAX_BYTES:
            return PlainTextResponse("form too large\n", status_code=413)
        body = await _read_body(request, _FORM_MAX_BYTES)
        if body is None:
            return PlainTextResponse("form too large\n", status_code=413)
        data = parse_form(body, [item.esp_list for item in lists])
        fresh = service.csrf.issue()
        peer = request.client.host if request.client else ""
        client = service.ip_guard.client(peer, request.headers.get("x-forwarded-for", ""))
        if not form_rate.allow(client):
            return _form_page(request, render_form(
                title, lists, fresh, email=data.email, checked=data.lists,
                errors=["Too many attempts from your address. Please try again in a "
                        "minute."]), status=429, token=fresh)
        if not service.csrf.valid(request.cookies.get(CSRF_COOKIE, ""), data.token):
            return _form_page(request, render_form(
                title, lists, fresh, email=data.email, checked=data.lists,
                errors=["This form expired or was not sent from this page. "
                        "Please try again."]), status=403, token=fresh)
        if data.errors:
            return _form_page(request, render_form(
                title, lists, fresh, errors=data.errors, email=data.email,
                checked=data.lists), status=400, token=fresh)
        try:
            results = await run_in_threadpool(service.subscribe, data.email, data.lists,
                                              config.form_confirm, "subscription form")
        except (ConfigError, DataError) as exc:
            return _form_page(request, render_form(title, lists, fresh, errors=[str(exc)],
                                                   email=data.email, checked=data.lists),
                              status=400, token=fresh)
        except CrmsyncError as exc:
            log.warning("the subscription form could not subscribe %s: %s", data.email, exc)
            results = []
        if not results or not all(result.ok for result in results):
            return _form_page(request, render_form(
                title, lists, fresh, email=data.email, checked=data.lists,
                errors=["We could not subscribe you right now. Please try again later."]),
                status=502, token=fresh)
        names = [item.name for item in lists if item.esp_list in data.lists]
        return _form_page(request, render_done(title, data.email, names,
                                               confirm=config.form_confirm))

    async def send_message(request: Request) -> Response:
        token = service.send_token
        if not token:
            return PlainTextResponse("POST /send is off: set CRMSYNC_SEND_TOKEN to enable it\n",
                                     status_code=404)
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not constant_equal(given[7:].strip(), token):
            return JSONResponse({"error": "wrong or missing bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        body = await _read_body(request, _FORM_MAX_BYTES)
        if body is None:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            transactional = data.get("transactional", False)
            if not isinstance(transactional, bool):
                raise ValueError('"transactional" is true or false')
            args: dict[str, Any] = {
                "message_id": _scalar(data["message"]),
                "to": None if data.get("to") is None else _scalar(data["to"]),
                "list_id": None if data.get("list") is None else _scalar(data["list"]),
                "group_id": None if data.get("group") is None else _scalar(data["group"]),
                "transactional": transactional}
        except (ValueError, KeyError, RecursionError) as exc:
            return JSONResponse({"error": f'expected JSON {{"message": ID, "to": EMAIL}} or '
                                          f'{{"message": ID, "list": ID, "group": ID}}: '
                                          f"{str(exc)[:200]}"}, status_code=400)
        try:
            result = await run_in_threadpool(functools.partial(service.send, **args))
        except ConsentRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=403)
        except (ConfigError, DataError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except CrmsyncError as exc:
            return JSONResponse({"error": str(exc)}, status_code=502)
        return JSONResponse(result.model_dump(mode="json"),
                            status_code=200 if result.ok else 502)

    routes: list[BaseRoute] = [
        Route(hooks_prefix + "/{side}", hook, methods=list(_METHODS)),
        Route(hooks_prefix + "/{side}/{rest:path}", hook, methods=list(_METHODS)),
    ]
    if only_hooks:
        return Starlette(routes=routes)
    routes += [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/subscribe", subscribe_form, methods=["GET", "POST"]),
        Route("/send", send_message, methods=["POST"]),
    ]
    from .console import console_routes

    routes += console_routes(service.config, service.store, secrets=service.secrets,
                             config_path=service.config_path,
                             wake=service.worker.wake if service.worker_expected else None,
                             esp=service.esp,
                             live=lambda: (service.worker.run_id, dict(service.worker.counts)))
    return Starlette(routes=routes)

