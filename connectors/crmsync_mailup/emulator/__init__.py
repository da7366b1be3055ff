"""A MailUp emulator: REST console API, OAuth, webhooks, batch files, sending.

An ASGI app over an in-memory store (``store``) that reproduces what the reference documents:
the paging envelope (0-based, 20 by default, parameter names in either case), the
error envelope (``ErrorCode`` a string), OAuth password grant and refresh with
rotation (tokens expire after ``token_ttl``), the 5 calls/s limit answered with the
documented 429 body, bare-integer answers to subscribe and import, the upsert rules
(a default subscribe or import never changes an existing status), unsubscribe keeping
group memberships, the confirmation flow (a ConfirmEmail import holds its confirmation
mail until ``POST /Email/Sendings/{id}/Immediate``), webhooks (plain or RC4+Base64) fired for
console and recipient actions -- never for REST calls or imports --, and the batch
side: files dropped in ``<files_dir>/in`` with a manifest are imported on
``POST /_emulator/import``; ``POST /_emulator/export`` writes the unsubscribers since
the last export to ``<files_dir>/out``.

Control routes added to the harness's (all under ``/_emulator/``)::

    POST confirm      {"email", "list"}                 a pending recipient clicks the link
    POST subscribe    {"email", "list", "groups", "fields", "confirm"}   a form subscription
    POST profile      {"email", "list", "fields", "groups"}              a profile change
    POST change_email {"email", "new_email"}            unsubscribe old + subscribe new
    POST bounce       {"email", "kind": "hard"|"spam", "list"}
    POST delete       {"email"}                         a console delete
    GET/POST/DELETE webhooks  {"url", "event", "method", "encrypted", "key", "params",
                               "list", "sources"}  (GET also lists the deliveries)
    POST config       {"rate_limit", "token_ttl", "import_polls", "webhook_retry_delays",
                       "max_page_size", "optin_status_names", "date_zone"}
    POST import / POST export {"row_delay_s"}           the batch file space (export
                                                        slowly, in place: not atomic)
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from crmsync.emulator import Emulator

from .files import BatchSpace
from .rest import Call, ConsoleApi, envelope
from .store import MailUpError, MailUpStore
from .webhooks import WebhookDispatcher

__all__ = ["CONSOLE", "FRONTEND", "OAUTH", "TRANSACTIONAL", "MailUpEmulator"]

CONSOLE = "/API/v1.1/Rest/ConsoleService.svc/Console"
OAUTH = "/Authorization/OAuth/Token"
TRANSACTIONAL = "/API/v2.0/messages/sendmessage"
FRONTEND = "/frontend"
_CAMPO = re.compile(r"campo(\d+)", re.IGNORECASE)
# The emulator's well-known demo credentials: client id, client secret, user, password,
# SMTP+ user, SMTP+ secret.
_DEMO = ("crmsync-demo", "demo-secret", "m12345", "demo-password", "s12345_1", "tx-secret")


def _num(value: Any, default: float | None) -> float | None:
    if value is None or value == "":
        return default
    number = float(value)
    return number or None


def _status_names(value: str | dict[str, str] | None) -> dict[str, str]:
    """``unsubscribed=OPTOUT_BOUNCE,...`` or a dict: the EmailOptins ``Status`` texts."""
    names = {"subscribed": "OPTIN", "unsubscribed": "OPTOUT", "pending": "PENDING"}
    if isinstance(value, str):
        value = dict(item.split("=", 1) for item in value.split(",") if "=" in item)
    names.update({k.strip(): v.strip() for k, v in (value or {}).items()})
    return names


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Run under the emulator's (re-entrant) lock: tests and the demo call these directly
    while the server thread serves requests."""
    @functools.wraps(method)
    def wrapper(self: MailUpEmulator, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)
    return cast(F, wrapper)


class MailUpEmulator(Emulator):
    """MailUp, in memory. Options may be given as strings (``crmsync emulate -o k=v``)."""

    name: ClassVar[str] = "mailup"

    def __init__(
            self, *, contacts: int = 0, seed: int = 0, token_ttl: float | str = 3600,
            rate_limit: float | str | None = 5, files_dir: str | Path | None = None,
            client_id: str = _DEMO[0], client_secret: str = _DEMO[1],
            username: str = _DEMO[2], password: str = _DEMO[3],
            transactional_username: str = _DEMO[4], transactional_secret: str = _DEMO[5],
            import_polls: int | str = 1, webhook_retry_delays: list[float] | str | None = None,
            export_separator: str = ";", export_encoding: str = "utf-8",
            file_status_column: str = "Status",
            frontend_ips: list[str] | str = "127.0.0.1",
            max_page_size: int | str | None = None, optin_status_names: str | None = None,
            date_zone: str = "Europe/Rome") -> None:
        self.token_ttl = float(token_ttl)
        self.rate_limit = _num(rate_limit, None)
        self.files_dir = Path(files_dir) if files_dir else None
        self.credentials = (client_id, client_secret, username, password)
        self.transactional = (transactional_username, transactional_secret)
        self.import_polls = int(import_polls)
        self.max_page_size = int(max_page_size) if max_page_size else None
        self.optin_status_names = _status_names(optin_status_names)
        self.date_zone = date_zone
        if isinstance(webhook_retry_delays, str):
            webhook_retry_delays = [float(x) for x in webhook_retry_delays.split(",") if x]
        if isinstance(frontend_ips, str):
            frontend_ips = [ip.strip() for ip in frontend_ips.split(",") if ip.strip()]
        self.frontend_ips = set(frontend_ips)
        self._file_options = {"status_column": file_status_column,
                              "separator": export_separator, "encoding": export_encoding}
        self._calls: deque[float] = deque()
        self.access: dict[str, float] = {}
        self.refresh: set[str] = set()
        self.store = MailUpStore()
        self.dispatcher = WebhookDispatcher(threading.RLock(), webhook_retry_delays)
        self.console = ConsoleApi(self)
        super().__init__(contacts=contacts, seed=seed)
        self.dispatcher.lock = self.lock

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Every message sent (console sends and transactional), for tests."""
        return self.store.sent

    @property
    def space(self) -> BatchSpace:
        return BatchSpace(self.store, self.files_dir, zone=self.date_zone, **self._file_options)

    # -- the store ---------------------------------------------------------------------------
    def reset(self) -> None:
        self.store = MailUpStore()
        self.access = {}
        self.refresh = set()
        self.dispatcher.clear()

    def seed(self, contacts: int, seed: int) -> None:
        self.store.seed(contacts, seed)

    def state(self) -> dict[str, Any]:
        return self.store.state()

    @_locked
    def import_files(self) -> dict[str, Any]:
        """Import every complete file in ``<files_dir>/in`` (see :class:`BatchSpace`)."""
        return self.space.import_files()

    @_locked
    def export_unsubscribers(self, row_delay_s: float | str = 0) -> dict[str, Any]:
        """Write the unsubscribers since the last export to ``<files_dir>/out``;
        ``row_delay_s``: slowly and in place (see :meth:`BatchSpace.export_unsubscribers`)."""
        return self.space.export_unsubscribers(row_delay_s=float(row_delay_s))

    def add_webhook(self, **options: Any) -> dict[str, Any]:
        """Configure a webhook as the console's Developer's Corner would."""
        return self.dispatcher.add_webhook(**options)

    # -- harness hooks -----------------------------------------------------------------------
    @_locked
    def unsubscribe(self, email: str, list_id: str) -> dict[str, Any]:
        """A recipient clicks "unsubscribe" in a message (type 2, subtype 21)."""
        rec = self.store.find(email)
        if rec is None or list_id not in rec["lists"]:
            raise KeyError(email)
        self.store.set_status(rec, list_id, "unsubscribed", optout_type=2, optout_subtype=21)
        self.dispatcher.fire("UNSUBSCRIBE", rec, list_id, "RECIPIENT", reason="2")
        return {"email": rec["email"], "list": list_id, "status": "unsubscribed"}

    def expire_sessions(self) -> None:
        self.access.clear()

    def demo_profile(self) -> dict[str, Any]:
        client_id, client_secret, username, password = self.credentials
        settings: dict[str, Any] = {
            "base_url": f"{self.base_url}/API/v1.1/Rest/ConsoleService.svc",
            "auth_url": f"{self.base_url}{OAUTH}",
            "transactional_url": f"{self.base_url}{TRANSACTIONAL}",
            "client_id": client_id, "username": username,
            "transactional_username": self.transactional[0],
            "field_ids": {"name": 1, "surname": 2},
        }
        if self.ca_path:
            settings["ca_file"] = self.ca_path
        return {
            "settings": settings,
            "secrets": {"CRMSYNC_MAILUP_CLIENT_SECRET": client_secret,
                        "CRMSYNC_MAILUP_PASSWORD": password,
                        "CRMSYNC_MAILUP_TRANSACTIONAL_SECRET": self.transactional[1]},
            "fields": {},
            "lists": [{"name": "Newsletter", "esp_list": "1", "members": "all"},
                      {"name": "Events", "esp_list": "2", "members": "all"}],
        }

    def fault_response(self, status: int) -> Response:
        if status == 429:
            return self._too_many(10)
        return envelope(status, {401: "Authorization error: Access token is expired",
                                 503: "Service temporarily unavailable"}.get(
                                     status, "Internal error"))

    @staticmethod
    def _too_many(actual: int) -> Response:
        return JSONResponse({"ErrorCode": "429", "ErrorDescription": (
            "Authorization error (too_many_requests): Too many requests. Max:5 calls per "
            f"second , actual:{actual}."), "ErrorName": None, "ErrorStack": None},
            status_code=429)

    def _over_rate(self) -> int:
        if not self.rate_limit:
            return 0
        with self.lock:
            now = time.monotonic()
            while self._calls and now - self._calls[0] >= 1.0:
                self._calls.popleft()
            self._calls.append(now)
            return len(self._calls) if len(self._calls) > self.rate_limit else 0

    def _authorised(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() == "mailup":
            return envelope(401, "Authorization error: token type MailUp is no longer "
                                 "accepted, use Bearer")
        if kind.lower() != "bearer" or not token:
            return envelope(401, "Authorization error: missing access token")
        with self.lock:
            expiry = self.access.get(token.strip())
            if expiry is None:
                return envelope(401, "Authorization error: Access token is invalid")
            if time.monotonic() >= expiry:
                del self.access[token.strip()]
                return envelope(401, "Authorization error: Access token is expired")
        return None

    def _console(self, handler: Callable[[Call], Any], *, status: int = 200
                 ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            self.dispatcher.loop = asyncio.get_running_loop()
            denied = self._authorised(request)
            if denied is not None:
                return denied
            actual = self._over_rate()
            if actual:
                return self._too_many(actual)
            raw = await request.body()
            try:
                body = json.loads(raw) if raw.strip() else None
            except ValueError:
                return envelope(400, "Invalid request: the body is not JSON")
            try:
                with self.lock:
                    result = handler(Call(request, body))
            except MailUpError as exc:
                return envelope(exc.status, exc.description)
            if result is None:
                return Response(b"", status_code=200)
            return JSONResponse(result, status_code=status)
        return endpoint

    async def _token(self, request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", errors="replace")
        form = dict(parse_qsl(raw, keep_blank_values=True))
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic ") and "client_id" not in form:
            try:
                pair = base64.b64decode(basic[6:].strip()).decode()
            except (ValueError, UnicodeDecodeError):
                pair = ""
            form["client_id"], _, form["client_secret"] = pair.partition(":")
        client_id, client_secret, username, password = self.credentials
        if form.get("client_id") != client_id or form.get("client_secret") != client_secret:
            return JSONResponse({"error": "invalid_client",
                                 "error_description": "Client authentication failed"},
                                status_code=401)
        with self.lock:
            grant = form.get("grant_type")
            if grant == "password":
                if form.get("username") != username or form.get("password") != password:
                    return JSONResponse({"error": "invalid_grant", "error_description":
                                         "Invalid username or password"}, status_code=400)
            elif grant == "refresh_token":
                old = str(form.get("refresh_token") or "")
                if old not in self.refresh:
                    return JSONResponse({"error": "invalid_grant", "error_description":
                                         "Invalid refresh token"}, status_code=400)
                self.refresh.discard(old)  # rotation: the old one is spent
            else:
                return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
            access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
            self.access[access] = time.monotonic() + self.token_ttl
            self.refresh.add(refresh)
        return JSONResponse({"access_token": access, "expires_in": int(self.token_ttl),
                             "refresh_token": refresh})

    async def _transactional(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"Status": "error", "Code": "1", "Message": "Invalid JSON"},
                                status_code=400)
        user = body.get("User") or {}
        if (user.get("Username"), user.get("Secret")) != self.transactional:
            return JSONResponse({"Status": "error", "Code": "3",
                                 "Message": "Authentication failed"})
        to = [str(t.get("Email")) for t in body.get("To") or []]
        if not to or not body.get("From", {}).get("Email"):
            return JSONResponse({"Status": "error", "Code": "2",
                                 "Message": "From and To are required"})
        with self.lock:
            self.store.sent.append({"transactional": True, "to": to,
                                    "subject": body.get("Subject")})
            number = len(self.store.sent)
        return JSONResponse({"Status": "done", "Code": "0", "Message": f"Message {number}"})

    # -- the legacy HTTP API (no credentials: registered IP addresses only, no rate limit) --
    async def _xml_subscribe(self, request: Request) -> Response:
        self.dispatcher.loop = asyncio.get_running_loop()
        raw = (await request.body()).decode("utf-8", errors="replace")
        params = {k.lower(): v for k, v in [*request.query_params.multi_items(),
                                             *parse_qsl(raw, keep_blank_values=True)]}
        client = request.client.host if request.client else ""
        code = "-1011" if client not in self.frontend_ips else self.xml_subscribe(params)
        return PlainTextResponse(code if params.get("retcode") == "1" else "")

    @_locked
    def xml_subscribe(self, params: dict[str, str]) -> str:
        """``xmlSubscribe.aspx``: one address, several lists and groups; a return code."""
        store = self.store
        lists = [x.strip() for x in params.get("list", "").split(",") if x.strip()]
        groups = [x.strip() for x in params.get("group", "").split(",") if x.strip()]
        email = params.get("email", "").strip().lower()
        if not lists or any(x not in store.lists for x in lists):
            return "1"
        if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", email):
            return "2"
        if any(g not in store.groups for g in groups):
            return "1"
        names = [n for n in params.get("csvfldnames", "").split(";") if n]
        values = params.get("csvfldvalues", "").split(";") if names else []
        if len(names) != len(values) or any("--" in v for v in values):
            return "1"
        fields = []
        for name, value in zip(names, values, strict=True):
            match = _CAMPO.fullmatch(name.strip())
            if not match or int(match.group(1)) not in store.fields:
                return "1"
            fields.append({"Id": int(match.group(1)), "Value": value})
        confirm = params.get("confirm", "1").lower() not in ("0", "false")
        before = store.find(email)
        already = before is not None and all(
            before["lists"].get(x, {}).get("status") == "subscribed" for x in lists)
        for list_id in lists:
            previous = before["lists"].get(list_id, {}).get("status") if before else None
            if previous == "subscribed":
                rec = store.upsert({"Email": email, "Fields": fields}, list_id)
            else:
                rec = store.upsert({"Email": email, "Fields": fields}, list_id, confirm=confirm,
                                   reoptin=True)
            member = rec["lists"][list_id]
            member["groups"] |= {g for g in groups if store.groups[g]["list"] == list_id}
            if member["status"] == "subscribed" and previous != "subscribed":
                self.dispatcher.fire("SUBSCRIBE", rec, list_id, "API")
        return "3" if already else "0"

    # -- routes ------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [Route(OAUTH, self._token, methods=["POST"]),
                Route(TRANSACTIONAL, self._transactional, methods=["POST"]),
                Route(FRONTEND + "/xmlSubscribe.aspx", self._xml_subscribe,
                      methods=["GET", "POST"]),
                *(Route(CONSOLE + path, self._console(handler), methods=methods)
                  for path, handler, methods in self.console.table())]

    def control_routes(self) -> list[BaseRoute]:
        return [
            Route("/_emulator/confirm", self._control(self.confirm), methods=["POST"]),
            Route("/_emulator/subscribe", self._control(self.form_subscribe), methods=["POST"]),
            Route("/_emulator/profile", self._control(self.change_profile), methods=["POST"]),
            Route("/_emulator/change_email", self._control(self.change_email),
                  methods=["POST"]),
            Route("/_emulator/bounce", self._control(self.bounce), methods=["POST"]),
            Route("/_emulator/delete", self._control(self.console_delete), methods=["POST"]),
            Route("/_emulator/webhooks", self._webhooks, methods=["GET", "POST", "DELETE"]),
            Route("/_emulator/config", self._control(self.configure), methods=["POST"]),
            Route("/_emulator/import", self._control(lambda body: self.import_files()),
                  methods=["POST"]),
            Route("/_emulator/export", self._control(
                lambda body: self.export_unsubscribers(body.get("row_delay_s", 0))),
                  methods=["POST"]),
        ]

    def _control(self, action: Callable[[dict[str, Any]], dict[str, Any]]
                 ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            self.dispatcher.loop = asyncio.get_running_loop()
            raw = await request.body()
            try:
                body = json.loads(raw) if raw.strip() else {}
                with self.lock:
                    return JSONResponse(action(body))
            except KeyError as exc:
                return JSONResponse({"error": f"missing or unknown {exc}"}, status_code=404)
            except (ValueError, TypeError, MailUpError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return endpoint

    async def _webhooks(self, request: Request) -> Response:
        self.dispatcher.loop = asyncio.get_running_loop()
        with self.lock:
            if request.method == "GET":
                return JSONResponse({"hooks": [{k: v for k, v in h.items() if k != "key"}
                                               for h in self.dispatcher.hooks],
                                     "deliveries": [dict(d) for d in self.dispatcher.deliveries]})
            if request.method == "DELETE":
                self.dispatcher.clear()
                return JSONResponse({"ok": True})
        body = json.loads(await request.body() or b"{}")
        try:
            hook = self.add_webhook(**body)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"id": hook["id"]})

    def _known(self, email: str) -> dict[str, Any]:
        rec = self.store.find(str(email))
        if rec is None:
            raise KeyError(email)
        return rec

    @_locked
    def confirm(self, body: dict[str, Any]) -> dict[str, Any]:
        rec, list_id = self._known(body["email"]), str(body["list"])
        if rec["lists"].get(list_id, {}).get("status") != "pending":
            raise ValueError(f"{rec['email']} is not pending on list {list_id}")
        self.store.set_status(rec, list_id, "subscribed")
        self.dispatcher.fire("SUBSCRIBE", rec, list_id, "RECIPIENT")
        return {"email": rec["email"], "list": list_id, "status": "subscribed"}

    @_locked
    def form_subscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        list_id = str(body["list"])
        self.store.list_(list_id)
        names = {v: k for k, v in self.store.fields.items()}
        fields = [{"Id": names[k], "Value": v} for k, v in (body.get("fields") or {}).items()]
        rec = self.store.upsert({"Email": body["email"], "Fields": fields}, list_id,
                           confirm=bool(body.get("confirm", False)), reoptin=True)
        self.store.set_groups(rec, list_id, body.get("groups"))
        status = rec["lists"][list_id]["status"]
        if status == "subscribed":
            self.dispatcher.fire("SUBSCRIBE", rec, list_id, "RECIPIENT")
        return {"email": rec["email"], "list": list_id, "status": status}

    @_locked
    def change_profile(self, body: dict[str, Any]) -> dict[str, Any]:
        rec, list_id = self._known(body["email"]), str(body["list"])
        names = {v: k for k, v in self.store.fields.items()}
        for name, value in (body.get("fields") or {}).items():
            rec["fields"][names[name]] = str(value)
        self.store.membership(rec, list_id)
        self.store.set_groups(rec, list_id, body.get("groups"))
        self.dispatcher.fire("CHANGEPROFILE", rec, list_id, "RECIPIENT")
        return {"email": rec["email"]}

    @_locked
    def change_email(self, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._known(body["email"])
        new = str(body["new_email"]).strip().lower()
        if self.store.find(new) is not None:
            raise ValueError(f"{new} already exists")
        old = rec["email"]
        active = [lid for lid, m in rec["lists"].items() if m["status"] == "subscribed"]
        for list_id in active:
            self.dispatcher.fire("UNSUBSCRIBE", rec, list_id, "CONSOLE", reason="0", email=old)
        self.store.by_email.pop(old, None)
        rec["email"] = new
        self.store.by_email[new] = rec["id"]
        for list_id in active:
            self.dispatcher.fire("SUBSCRIBE", rec, list_id, "CONSOLE")
        return {"email": new, "previous_email": old}

    @_locked
    def bounce(self, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._known(body["email"])
        kind = body.get("kind", "hard")
        if kind == "hard":
            targets, code, sub = list(rec["lists"]), 8, 80  # hard bounces: every list
        else:
            targets, code, sub = [str(body["list"])], 16, 161
        for list_id in targets:
            if rec["lists"].get(list_id, {}).get("status") not in (None, "unsubscribed"):
                self.store.set_status(rec, list_id, "unsubscribed", optout_type=code,
                                 optout_subtype=sub)
                self.dispatcher.fire("UNSUBSCRIBE", rec, list_id, "RECIPIENT", reason=str(code))
        return {"email": rec["email"], "lists": targets}

    @_locked
    def console_delete(self, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._known(body["email"])
        lists = list(rec["lists"]) or [None]
        for list_id in lists:
            self.dispatcher.fire("DELETE", rec, list_id, "CONSOLE")
        rec["lists"].clear()
        rec["deleted"] = True
        self.store.by_email.pop(rec["email"], None)
        return {"email": rec["email"], "deleted": True}

    @_locked
    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"rate_limit", "token_ttl", "import_polls",
                               "webhook_retry_delays", "max_page_size", "optin_status_names",
                               "date_zone"}
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
        if "rate_limit" in body:
            self.rate_limit = _num(body["rate_limit"], None)
        if "token_ttl" in body:
            self.token_ttl = float(body["token_ttl"])
        if "import_polls" in body:
            self.import_polls = int(body["import_polls"])
        if "webhook_retry_delays" in body:
            self.dispatcher.retry_delays = [float(x) for x in body["webhook_retry_delays"]]
        if "max_page_size" in body:
            self.max_page_size = int(body["max_page_size"]) if body["max_page_size"] else None
        if "optin_status_names" in body:
            self.optin_status_names = _status_names(body["optin_status_names"])
        if "date_zone" in body:
            self.date_zone = str(body["date_zone"])
        return {"max_page_size": self.max_page_size, "date_zone": self.date_zone,
                "optin_status_names": self.optin_status_names,
                "rate_limit": self.rate_limit, "token_ttl": self.token_ttl,
                "import_polls": self.import_polls,
                "webhook_retry_delays": self.dispatcher.retry_delays}
