"""The operator's web console: Starlette routes, Jinja2 pages, htmx from a static file.

Routes (every one but the login page and the static files needs a session)::

    GET      /admin/                      -> /admin/runs
    GET|POST /admin/login   POST /admin/logout
    GET      /admin/runs                  runs, plan per list, chart of the last 30
    GET      /admin/runs/{id}/report      a run's failed-records CSV
    GET      /admin/contact?q=EMAIL|ID    one contact's story
    GET      /admin/dead-letters          dead letters and failed writes
    POST     /admin/dead-letters/replay   replay the chosen ones (or all)
    GET      /admin/health                both sides' check, cursors, lag, inbox, runs
    GET|POST /admin/resync                sync --full / --resend, with a confirmation
    GET      /go/esp?email=|id=  /go/contact?email=|id=   redirects for a CRM's button

Every page is server-rendered; htmx only refreshes parts of them (the runs table, a
resync's run row) and the pages work without it. Every POST carries the session's
CSRF token; every answer carries a strict Content-Security-Policy (no inline script or
style, nothing from another origin).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ...config import Config
from ...contract import Connector
from ...errors import CrmsyncError
from ...state import StateStore, read
from ...state.admin import replay_dead_letters
from ..security import CsrfTokens, IpGuard, constant_equal
from .auth import Operator

__all__ = ["CONTACT_ACTIONS", "Console", "console_routes"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "crmsync_console"
LOGIN_CSRF_COOKIE = "crmsync_console_login"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a deep link must not tell the ESP our URLs
    "Cache-Control": "no-store",
}
_MAX_FORM = 64 * 1024

#: Buttons on a contact's page: ``(label, path with {email})``; a module that adds a
#: contact action (erasure, a consent proof) appends here.
CONTACT_ACTIONS: list[tuple[str, str]] = []


@dataclass
class Resync:
    """One resync the console started: its process and what it was asked."""

    what: str
    started_at: datetime
    process: subprocess.Popen[bytes]
    output: list[str] = field(default_factory=list)


@dataclass
class Console:
    """What the console reads and acts on.

    ``wake``: the running server's worker (``crmsync serve``), which applies replayed
    events at once; without it (``crmsync console``) they are applied here in a
    background thread, unless a ``crmsync serve`` is found running on the same state
    store. ``config_path``: the file a resync runs ``crmsync sync`` with. ``esp``: the
    ESP connector the deep links ask (``serve``'s own; else one is opened per link).
    ``live``: the running real-time run's id and counts so far (its row in the state
    store has them only once it finishes).
    """

    config: Config
    store: StateStore
    operator: Operator
    config_path: Path | None = None
    wake: Callable[[], None] | None = None
    ip_guard: IpGuard | None = None
    esp: Connector | None = None
    live: Callable[[], tuple[str, dict[str, int]]] | None = None
    resyncs: list[Resync] = field(default_factory=list)
    _apply_lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, request: Request) -> str:
        peer = request.client.host if request.client else ""
        if self.ip_guard is None:
            return peer
        return self.ip_guard.client(peer, request.headers.get("x-forwarded-for", ""))


def console_routes(config: Config, store: StateStore, *, secrets: Any = None,
                   config_path: Path | None = None, wake: Callable[[], None] | None = None,
                   esp: Connector | None = None,
                   live: Callable[[], tuple[str, dict[str, int]]] | None = None
                   ) -> list[BaseRoute]:
    """The console's routes, or none at all when no operator password is set (then
    ``/admin`` is a plain 404)."""
    settings = config.console
    operator = Operator.from_secrets(
        config.secrets() if secrets is None else secrets,
        session_s=settings.session_hours * 3600, max_failures=settings.max_failures,
        lockout_s=settings.lockout_s)
    if operator is None:
        return []
    console = Console(config, store, operator, config_path=config_path, wake=wake,
                      ip_guard=IpGuard((), config.server.trusted_proxies), esp=esp,
                      live=live)
    return _routes(console)


def _routes(console: Console) -> list[BaseRoute]:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(("html",), default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["short"] = lambda value, n=19: "" if value is None else str(value)[:n].replace(
        "T", " ")
    login_csrf = CsrfTokens()
    config = console.config
    store = console.store

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        session = request.scope.get("crmsync.session")
        html = env.get_template(name).render(
            csrf=session.csrf if session else "", path=request.url.path,
            actions=CONTACT_ACTIONS, **context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def authed(handler: Callable[..., Any]) -> Callable[[Request], Any]:
        async def wrapped(request: Request) -> Response:
            session = console.operator.session(request.cookies.get(SESSION_COOKIE, ""))
            if session is None:
                if request.method == "GET" and "hx-request" not in request.headers:
                    target = request.url.path + (f"?{request.url.query}"
                                                 if request.url.query else "")
                    return RedirectResponse("/admin/login?" + urlencode({"next": target}),
                                            status_code=303, headers=HEADERS)
                return PlainTextResponse("log in first: /admin/login\n", status_code=401,
                                         headers=HEADERS)
            request.scope["crmsync.session"] = session
            if request.method == "POST":
                form = await _form(request)
                if form is None:
                    return PlainTextResponse("form too large\n", status_code=413,
                                             headers=HEADERS)
                token = form.get("csrf", [""])[0] or request.headers.get("x-csrf-token", "")
                if not token or not constant_equal(token, session.csrf):
                    log.warning("console: refused a POST to %s without this session's CSRF "
                                "token", request.url.path)
                    return page(request, "error.html", status=403, message=(
                        "This form was not sent from this console (its security token is "
                        "missing or wrong). Reload the page and try again."))
                request.scope["crmsync.form"] = form
            response: Response = await handler(request)
            return response
        return wrapped

    # -- logging in ------------------------------------------------------------------------
    async def login(request: Request) -> Response:
        next_path = _local_path(request.query_params.get("next", ""))
        if request.method == "GET":
            return _login_page(request, next_path)
        form = await _form(request)
        if form is None:
            return PlainTextResponse("form too large\n", status_code=413, headers=HEADERS)
        next_path = _local_path(form.get("next", [""])[0])
        if not login_csrf.valid(request.cookies.get(LOGIN_CSRF_COOKIE, ""),
                                form.get("csrf", [""])[0]):
            return _login_page(request, next_path, status=403, error=(
                "This login form expired or was not sent from this console. Try again."))
        client = console.client(request)
        wait = console.operator.wait_s(client)
        if wait > 0:
            return _login_page(request, next_path, status=429, error=(
                f"Too many wrong passwords from your address: wait {wait:.0f} s before "
                "trying again."), retry_after=wait)
        password = form.get("password", [""])[0]
        token = await run_in_threadpool(console.operator.login, client, password)
        if token is None:
            log.warning("console: wrong password from %s", client)
            return _login_page(request, next_path, status=401, error="Wrong password.")
        response = RedirectResponse(next_path or "/admin/runs", status_code=303,
                                    headers=HEADERS)
        # Secure always: browsers treat http://127.0.0.1 and http://localhost as secure
        # contexts and keep such a cookie there; anywhere else the console needs HTTPS.
        response.set_cookie(SESSION_COOKIE, token, max_age=int(console.operator.session_s),
                            path="/", secure=True, httponly=True, samesite="strict")
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin/login", secure=True,
                               httponly=True, samesite="strict")
        return response

    def _login_page(request: Request, next_path: str, *, status: int = 200,
                    error: str = "", retry_after: float = 0) -> Response:
        token = login_csrf.issue()
        plain_http = (request.url.scheme == "http" and request.url.hostname not in (
            "127.0.0.1", "localhost", "::1", "[::1]"))
        response = page(request, "login.html", status=status, login_csrf=token,
                        next=next_path, error=error, plain_http=plain_http)
        if retry_after:
            response.headers["Retry-After"] = str(int(retry_after) + 1)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, path="/admin/login",
                            secure=True, httponly=True, samesite="strict")
        return response

    async def logout(request: Request) -> Response:
        console.operator.logout(request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse("/admin/login", status_code=303, headers=HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True,
                               samesite="strict")
        return response

    async def home(request: Request) -> Response:
        return RedirectResponse("/admin/runs", status_code=303, headers=HEADERS)

    # -- runs ------------------------------------------------------------------------------
    async def runs_page(request: Request) -> Response:
        rows = await run_in_threadpool(read.runs, store, 30)
        if console.live is not None:
            run_id, counts = console.live()
            for row in rows:
                if row["id"] == run_id and row["status"] == "running":
                    row.update(read.run_counts(counts), stats=counts)
        template = "_runs_table.html" if "hx-request" in request.headers else "runs.html"
        return page(request, template, runs=rows, chart=_chart(rows))

    async def run_report(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        rows = await run_in_threadpool(read.runs, store, 200)
        run = next((r for r in rows if r["id"] == run_id), None)
        folder = config.path(config.sync.report_dir).resolve()
        path = Path(str(run["report"])).resolve() if run and run["report"] else None
        # only a report in the configured report folder: a run row is no file path to trust
        if path is None or folder not in path.parents or not path.is_file():
            return page(request, "error.html", status=404,
                        message="This run has no failed-records report (any more).")
        return FileResponse(path, media_type="text/csv", filename=path.name, headers=HEADERS)

    # -- one contact -----------------------------------------------------------------------
    async def contact_page(request: Request) -> Response:
        query = request.query_params.get("q", "").strip()[:320]
        key = request.query_params.get("key", "")
        matches: list[dict[str, Any]] = []
        story = None
        if key:
            story = await run_in_threadpool(_story, console, key)
        elif query:
            matches = await run_in_threadpool(lambda: read.find_contacts(
                store, query, systems=_systems(config)))
            if len(matches) == 1:
                story = await run_in_threadpool(_story, console, matches[0]["key"])
        esp_link = None
        if story is not None:
            esp_link = "/go/esp?" + urlencode({"email": story["contact"]["email"]})
        return page(request, "contact.html", q=query, matches=matches, story=story,
                    esp_link=esp_link, searched=bool(query or key))

    # -- dead letters ----------------------------------------------------------------------
    async def dead_page(request: Request) -> Response:
        params = request.query_params
        origin = params.get("origin", "")
        origin = origin if origin in ("inbox", "outbox") else ""
        text = params.get("q", "")[:200]
        show_replayed = params.get("replayed") == "1"
        letters = await run_in_threadpool(lambda: read.dead_letters(
            store, include_replayed=show_replayed, origin=origin or None, text=text))
        failed = await run_in_threadpool(read.failed_writes, store)
        return page(request, "dead_letters.html", letters=letters, failed=failed,
                    origin=origin, q=text, replayed=show_replayed,
                    message=params.get("message", "")[:300])

    async def dead_replay(request: Request) -> Response:
        form: dict[str, list[str]] = request.scope["crmsync.form"]
        if form.get("all", [""])[0] == "1":
            ids = [letter["id"] for letter in await run_in_threadpool(
                read.dead_letters, store, limit=100_000)]
        elif form.get("one"):  # a row's own button: that row alone, whatever is ticked
            ids = [int(v) for v in form["one"][:1] if v.isdigit()]
        else:
            ids = [int(v) for v in form.get("id", []) if v.isdigit()]
        if not ids:
            message = "Nothing chosen: tick the dead letters to replay."
        else:
            counts = await run_in_threadpool(replay_dead_letters, store, ids)
            message = await run_in_threadpool(_after_replay, console, counts)
        return RedirectResponse("/admin/dead-letters?" + urlencode({"message": message}),
                                status_code=303, headers=HEADERS)

    # -- health ----------------------------------------------------------------------------
    async def health_page(request: Request) -> Response:
        facts = await run_in_threadpool(read.health_facts, store)
        checks = await run_in_threadpool(_checks, config)
        return page(request, "health.html", facts=facts, checks=checks,
                    serving=console.wake is not None)

    # -- resync ----------------------------------------------------------------------------
    async def resync_page(request: Request) -> Response:
        resyncs = await run_in_threadpool(_resync_rows, console)
        lists = [(m.esp_list, m.name) for m in console.config.lists]
        if request.method == "GET":
            return page(request, "resync.html", step="choose", resyncs=resyncs,
                        available=console.config_path is not None, lists=lists)
        form: dict[str, list[str]] = request.scope["crmsync.form"]
        mode = form.get("mode", [""])[0]
        if mode not in ("full", "resend"):
            return page(request, "error.html", status=400,
                        message="Choose a full sync or a resend.")
        only = form.get("list", [""])[0]
        if only and only not in {esp_list for esp_list, _ in lists}:
            return page(request, "error.html", status=400,
                        message="Choose one of the configured lists, or every list.")
        if console.config_path is None:
            return page(request, "error.html", status=409, message=(
                "This console was started without a configuration file to run "
                "`crmsync sync` with."))
        if form.get("confirm", [""])[0] != "yes":
            return page(request, "resync.html", step="confirm", mode=mode, only=only,
                        resyncs=resyncs, available=True, lists=lists)
        started = _start_resync(console, mode, only)
        log.warning("console: the operator started `crmsync sync --%s` (pid %d)", mode,
                    started.process.pid)
        return RedirectResponse("/admin/resync", status_code=303, headers=HEADERS)

    async def resync_rows(request: Request) -> Response:
        resyncs = await run_in_threadpool(_resync_rows, console)
        return page(request, "_resync_rows.html", resyncs=resyncs)

    # -- deep links ------------------------------------------------------------------------
    async def go_esp(request: Request) -> Response:
        who = (request.query_params.get("email", "").strip().lower()
               or request.query_params.get("id", "").strip())[:320]
        try:
            url = await run_in_threadpool(_esp_url, console, who)
        except CrmsyncError as exc:
            return page(request, "error.html", status=502,
                        message=f"The ESP could not say where this person is: {exc}")
        if url is None:
            return page(request, "error.html", status=404, message=(
                f"The ESP connector ({config.esp.connector if config.esp else 'none'}) "
                "has no console page to show for this person: set its "
                "console_recipient_url, or the person is unknown to crmsync."))
        return RedirectResponse(url, status_code=303, headers=HEADERS)

    async def go_contact(request: Request) -> Response:
        email = request.query_params.get("email", "").strip()
        target = request.query_params.get("id", "").strip()
        return RedirectResponse("/admin/contact?" + urlencode({"q": email or target}),
                                status_code=303, headers=HEADERS)

    static = StaticFiles(directory=HERE / "static")

    async def static_files(scope: Any, receive: Any, send: Any) -> None:
        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (b"x-content-type-options", b"nosniff")]
            await send(message)
        await static(scope, receive, send_with_headers)

    admin = [
        Route("/", home, methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", authed(logout), methods=["POST"]),
        Route("/runs", authed(runs_page), methods=["GET"]),
        Route("/runs/{run_id}/report", authed(run_report), methods=["GET"]),
        Route("/contact", authed(contact_page), methods=["GET"]),
        Route("/dead-letters", authed(dead_page), methods=["GET"]),
        Route("/dead-letters/replay", authed(dead_replay), methods=["POST"]),
        Route("/health", authed(health_page), methods=["GET"]),
        Route("/resync", authed(resync_page), methods=["GET", "POST"]),
        Route("/resync/rows", authed(resync_rows), methods=["GET"]),
        Mount("/static", app=static_files),
    ]
    return [
        Route("/admin", home, methods=["GET"]),
        Mount("/admin", routes=admin),
        Route("/go/esp", authed(go_esp), methods=["GET"]),
        Route("/go/contact", authed(go_contact), methods=["GET"]),
    ]


async def _form(request: Request) -> dict[str, list[str]] | None:
    """An urlencoded form body (the console's only kind), or ``None`` when too large."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            return None
    form: dict[str, list[str]] = {}
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=5000)
    except (UnicodeDecodeError, ValueError):
        return {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form


def _local_path(value: str) -> str:
    """A redirect target only on this console (never ``//evil.example`` or a URL)."""
    if value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return ""


def _systems(config: Config) -> list[str]:
    return [side.connector for side in (config.crm, config.esp) if side is not None]


def _story(console: Console, key: str) -> dict[str, Any] | None:
    config = console.config
    return read.contact_story(console.store, key,
                              report_dir=config.path(config.sync.report_dir))


def _chart(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Bars for the last 30 runs, oldest on the left: records and failures."""
    points = list(reversed(runs[:30]))
    top = max([r["records"] for r in points] + [r["failures"] for r in points] + [1])
    width, height, gap = 600, 120, 2
    slot = width / max(len(points), 1)
    bars = []
    for n, run in enumerate(points):
        x = n * slot
        rec_h = run["records"] / top * height
        fail_h = run["failures"] / top * height
        bars.append({"x": round(x + gap, 1), "w": round(max(slot / 2 - gap, 1), 1),
                     "x2": round(x + slot / 2, 1), "rec_y": round(height - rec_h, 1),
                     "rec_h": round(rec_h, 1), "fail_y": round(height - fail_h, 1),
                     "fail_h": round(fail_h, 1), "run": run})
    return {"bars": bars, "width": width, "height": height, "top": top}


def _after_replay(console: Console, counts: dict[str, int]) -> str:
    """Get the replayed events applied, and say what happens to them."""
    parts = []
    if counts["outbox"]:
        parts.append(f"{counts['outbox']} write(s) go out again with the next run")
    if counts["inbox"]:
        if console.wake is not None:
            console.wake()
            parts.append(f"{counts['inbox']} event(s) back in the inbox: this server "
                         "applies them now")
        else:
            from ...commands.sync import serving_run

            serving = serving_run(console.store)
            if serving is not None:
                parts.append(f"{counts['inbox']} event(s) back in the inbox: the running "
                             f"crmsync serve (run {serving['id']}) applies them")
            else:
                threading.Thread(target=_apply_here, args=(console,), daemon=True,
                                 name="crmsync-console-replay").start()
                parts.append(f"{counts['inbox']} event(s) back in the inbox: being applied "
                             "here (see Runs: a replay run)")
    return "Replayed: " + "; ".join(parts) + "."


def _apply_here(console: Console) -> None:
    from ..service import apply_inbox

    with console._apply_lock:
        try:
            apply_inbox(console.config, console.store)
        except CrmsyncError as exc:
            log.error("console: applying replayed events failed: %s", exc)
        except Exception:
            log.exception("console: applying replayed events failed")


def _checks(config: Config) -> list[dict[str, Any]]:
    """Each side's ``check()``, with fresh connectors (never the worker's own)."""
    from ...runtime import open_side

    out = []
    for side in ("crm", "esp"):
        side_config = getattr(config, side)
        if side_config is None:
            continue
        started = time.monotonic()
        try:
            with open_side(config, side) as connector:
                health = connector.check()
            out.append({"side": side, "connector": side_config.connector, "ok": health.ok,
                        "detail": health.detail, "latency_ms": health.latency_ms})
        except CrmsyncError as exc:
            out.append({"side": side, "connector": side_config.connector, "ok": False,
                        "detail": str(exc), "latency_ms": None})
        except Exception as exc:  # a check must never take the page down
            log.exception("console: the %s check failed", side)
            out.append({"side": side, "connector": side_config.connector, "ok": False,
                        "detail": f"{type(exc).__name__}", "latency_ms": None})
        out[-1]["took_s"] = round(time.monotonic() - started, 2)
    return out


def _esp_url(console: Console, who: str) -> str | None:
    """The ESP's own page for ``who`` (an address, or a record id crmsync holds), with
    the ESP's record id when crmsync has it."""
    from ...runtime import open_side

    config = console.config
    if not who or config.esp is None:
        return None
    matches = read.find_contacts(console.store, who, systems=_systems(config))
    if not matches and "@" not in who:
        return None
    email, record_id = who, None
    if matches:
        story = read.contact_story(console.store, matches[0]["key"], limit=1)
        ids = [i["record_id"] for i in (story or {}).get("identities", [])
               if i["system"] == config.esp.connector]
        record_id = ids[0] if ids else None
        email = matches[0]["email"]
    if console.esp is not None:
        return console.esp.recipient_url(email, record_id)
    with open_side(config, "esp") as esp:
        return esp.recipient_url(email, record_id)


def _start_resync(console: Console, mode: str, only: str = "") -> Resync:
    assert console.config_path is not None
    command = [sys.executable, "-m", "crmsync", *console.config.selector(console.config_path),
               "--json", "sync", f"--{mode}", *(["--list", only] if only else [])]
    process = subprocess.Popen(  # noqa: S603 - our own command, no shell
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=dict(os.environ), cwd=str(console.config_path.parent))
    resync = Resync(what=f"sync --{mode}" + (f" --list {only}" if only else ""),
                    started_at=datetime.now(UTC), process=process)

    def collect() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            resync.output.append(line.decode("utf-8", "replace").rstrip())
            del resync.output[:-50]
        process.wait()

    threading.Thread(target=collect, daemon=True, name="crmsync-console-resync").start()
    console.resyncs.insert(0, resync)
    del console.resyncs[10:]
    return resync


def _resync_rows(console: Console) -> list[dict[str, Any]]:
    """The resyncs this console started, each with the run row it made."""
    if not console.resyncs:
        return []
    recent = read.runs(console.store, 50)
    rows = []
    for resync in console.resyncs:
        started = resync.started_at.isoformat()
        run = next((r for r in reversed(recent) if r["mode"] == "batch"
                    and (r["started_at"] or "") >= started[:19]), None)
        code = resync.process.poll()
        rows.append({"what": resync.what, "started_at": started, "pid": resync.process.pid,
                     "exit_code": code, "running": code is None, "run": run,
                     "output": "\n".join(resync.output[-5:]) if code not in (None, 0) else ""})
    return rows

