"""A MailUp emulator: REST console API, OAuth, webhooks, batch files, sending.

An ASGI app over an in-memory store that reproduces what the reference documents:
the paging envelope (0-based, 20 by default, parameter names in either case), the
error envelope (``ErrorCode`` a string), OAuth password grant and refresh with
rotation (tokens expire after ``token_ttl``), the 5 calls/s limit answered with the
documented 429 body, bare-integer answers to subscribe and import, the upsert rules
(a default subscribe or import never changes an existing status), unsubscribe keeping
group memberships, the confirmation flow, webhooks (plain or RC4+Base64) fired for
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
    POST config       {"rate_limit", "token_ttl", "import_polls", "webhook_retry_delays"}
    POST import / POST export                           the batch file space
"""

from __future__ import annotations

import asyncio
import base64
import csv
import functools
import hashlib
import io
import json
import random
import re
import secrets
import shutil
import threading
import time
import uuid
import zipfile
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import parse_qsl, quote, urlencode

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from crmsync.emulator import Emulator

from .webhooks import encrypt_payload

__all__ = ["CONSOLE", "MailUpEmulator"]

CONSOLE = "/API/v1.1/Rest/ConsoleService.svc/Console"
OAUTH = "/Authorization/OAuth/Token"
TRANSACTIONAL = "/API/v2.0/messages/sendmessage"
# The emulator's well-known demo credentials: client id, client secret, user, password,
# SMTP+ user, SMTP+ secret.
_DEMO = ("crmsync-demo", "demo-secret", "m12345", "demo-password", "s12345_1", "tx-secret")
_DEFAULT_FIELDS = ["name", "surname", "company", "city", "province", "zip", "region",
                   "country", "address", "fax", "phone"]
_NO_FORCE = {8, 16, 512}  # bounces and spam complaints: no forced opt-in afterwards
_ERROR_NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                429: None, 500: "InternalServerError", 503: "ServiceUnavailable"}
_FILTER = re.compile(r"""^\s*"?\s*(\w+)\s*(==|\.Contains\()\s*(['"])(.*)\3\s*\)?\s*"?\s*$""")


class MailUpError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def envelope(status: int, description: str) -> JSONResponse:
    """MailUp's REST error envelope (``ErrorCode`` is a string)."""
    return JSONResponse({"ErrorCode": str(status), "ErrorDescription": description,
                         "ErrorName": _ERROR_NAMES.get(status, "Error"), "ErrorStack": None},
                        status_code=status)


def _now() -> datetime:
    return datetime.now(UTC)


def _api_date(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}" \
        if value else ""


def _event_date(value: datetime) -> str:
    # MailUp's form: 2012-09-12T11:18:37.664+02 (milliseconds, an hours-only offset).
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+00"


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes")


def _num(value: Any, default: float | None) -> float | None:
    if value is None or value == "":
        return default
    number = float(value)
    return number or None


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Run under the emulator's (re-entrant) lock: tests and the demo call these directly
    while the server thread serves requests."""
    @functools.wraps(method)
    def wrapper(self: MailUpEmulator, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)
    return cast(F, wrapper)


class _Call:
    """One vendor request: path parameters, case-insensitive query, decoded JSON body."""

    def __init__(self, request: Request, body: Any) -> None:
        self.path = request.path_params
        self.query = {k.lower(): v for k, v in request.query_params.items()}
        self.body = body

    def q(self, name: str) -> str | None:
        return self.query.get(name.lower())


class MailUpEmulator(Emulator):
    """MailUp, in memory. Options may be given as strings (``crmsync emulate -o k=v``)."""

    name: ClassVar[str] = "mailup"

    def __init__(
            self, *, contacts: int = 0, seed: int = 0, token_ttl: float | str = 3600,
                 rate_limit: float | str | None = 5, files_dir: str | Path | None = None,
                 client_id: str = _DEMO[0], client_secret: str = _DEMO[1],
                 username: str = _DEMO[2], password: str = _DEMO[3],
                 transactional_username: str = _DEMO[4],
                 transactional_secret: str = _DEMO[5], import_polls: int | str = 1,
                 webhook_retry_delays: list[float] | str | None = None,
                 export_separator: str = ";", export_encoding: str = "utf-8",
                 file_status_column: str = "Status") -> None:
        self.token_ttl = float(token_ttl)
        self.rate_limit = _num(rate_limit, None)
        self.files_dir = Path(files_dir) if files_dir else None
        self.credentials = (client_id, client_secret, username, password)
        self.transactional = (transactional_username, transactional_secret)
        self.import_polls = int(import_polls)
        if isinstance(webhook_retry_delays, str):
            webhook_retry_delays = [float(x) for x in webhook_retry_delays.split(",") if x]
        # MailUp retries over 25 h: 3x5 min, 3x15 min, 3x2 h, 3x6 h.
        self.retry_delays = list(webhook_retry_delays if webhook_retry_delays is not None
                                 else [300] * 3 + [900] * 3 + [7200] * 3 + [21600] * 3)
        self.export_separator = export_separator
        self.export_encoding = export_encoding
        self.file_status_column = file_status_column
        self._calls: deque[float] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.hooks: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        super().__init__(contacts=contacts, seed=seed)

    # -- the store ---------------------------------------------------------------------------
    def reset(self) -> None:
        self.lists: dict[str, dict[str, Any]] = {
            "1": {"name": "Newsletter", "guid": str(uuid.UUID(int=1)), "description": ""},
            "2": {"name": "Events", "guid": str(uuid.UUID(int=2)), "description": ""},
        }
        self.groups: dict[str, dict[str, Any]] = {
            "1": {"list": "1", "name": "news", "notes": "", "deletable": True},
            "2": {"list": "1", "name": "offers", "notes": "", "deletable": True},
            "3": {"list": "2", "name": "vip", "notes": "", "deletable": True},
        }
        self.fields = {i + 1: name for i, name in enumerate(_DEFAULT_FIELDS)}
        self.recipients: dict[int, dict[str, Any]] = {}
        self.by_email: dict[str, int] = {}
        self.imports: dict[int, dict[str, Any]] = {}
        self.messages: dict[int, dict[str, Any]] = {
            1: {"list": "1", "subject": "Welcome"}, 2: {"list": "2", "subject": "Invitation"}}
        self.sent: list[dict[str, Any]] = []
        self.optouts: list[dict[str, Any]] = []
        self.exported = 0
        self.access: dict[str, float] = {}
        self.refresh: set[str] = set()
        self.hooks = []
        self.deliveries = []
        self._ids = {"recipient": 0, "group": 3, "import": 0, "message": 2, "hook": 0}

    def _next(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    def seed(self, contacts: int, seed: int) -> None:
        rng = random.Random(seed)
        for number in range(contacts):
            rec = self._create(f"contact{seed}-{number}@example.com",
                               {1: f"First{number}", 2: f"Last{number}"})
            roll = rng.random()
            status = "unsubscribed" if roll < 0.1 else "pending" if roll < 0.2 else "subscribed"
            self._set_status(rec, "1", status, optout_type=2, optout_subtype=21,
                             log=False)
            membership = rec["lists"]["1"]
            membership["groups"] = {g for g in ("1", "2") if rng.random() < 0.4}
            if rng.random() < 0.3:
                self._set_status(rec, "2", "subscribed", log=False)

    def _create(self, email: str, fields: dict[int, str] | None = None) -> dict[str, Any]:
        rid = self._next("recipient")
        rec: dict[str, Any] = {"id": rid, "email": email.strip().lower(), "name": "",
               "fields": dict(fields or {}), "mobile_number": "", "mobile_prefix": "",
               "lists": {}, "deleted": False}
        self.recipients[rid] = rec
        self.by_email[rec["email"]] = rid
        return rec

    def _membership(self, rec: dict[str, Any], list_id: str) -> dict[str, Any]:
        lists: dict[str, dict[str, Any]] = rec["lists"]
        return lists.setdefault(list_id, {
            "status": None, "groups": set(), "optin_date": None, "optout_date": None,
            "optout_type": None, "optout_subtype": None, "optin_request_date": None,
            "optout_nl": None})

    def _set_status(self, rec: dict[str, Any], list_id: str, status: str, *,
                    optout_type: int = 1, optout_subtype: int | None = None,
                    log: bool = True) -> None:
        member = self._membership(rec, list_id)
        if member["status"] == status:
            return
        member["status"] = status
        now = _now()
        if status == "subscribed":
            member["optin_date"] = now
            member["optout_date"] = member["optout_type"] = member["optout_subtype"] = None
        elif status == "pending":
            member["optin_request_date"] = now
            member["optout_date"] = member["optout_type"] = member["optout_subtype"] = None
        else:
            member["optout_date"] = now
            member["optout_type"] = optout_type
            member["optout_subtype"] = optout_subtype
            if log:
                self.optouts.append({"email": rec["email"], "list": list_id, "at": now,
                                     "type": optout_type, "subtype": optout_subtype,
                                     "nl": member.get("optout_nl")})

    def _recipient(self, rid: Any) -> dict[str, Any]:
        try:
            rec = self.recipients[int(rid)]
        except (KeyError, TypeError, ValueError):
            raise MailUpError(404, f"Recipient {rid} not found") from None
        if rec["deleted"]:
            raise MailUpError(404, f"Recipient {rid} not found")
        return rec

    def _list(self, list_id: str) -> dict[str, Any]:
        if list_id not in self.lists:
            raise MailUpError(404, f"List {list_id} not found")
        return self.lists[list_id]

    def _group(self, group_id: str) -> dict[str, Any]:
        if group_id not in self.groups:
            raise MailUpError(404, f"Group {group_id} not found")
        return self.groups[group_id]

    def find(self, email: str) -> dict[str, Any] | None:
        rid = self.by_email.get(email.strip().lower())
        return None if rid is None or self.recipients[rid]["deleted"] else self.recipients[rid]

    # -- the upsert rules ----------------------------------------------------------------------
    def _upsert(self, body: Any, list_id: str, *, confirm: bool = False, optout: bool = False,
                clear_empty: bool = False) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise MailUpError(400, "Invalid request: expected a recipient object")
        email = str(body.get("Email") or "").strip().lower()
        if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", email):
            raise MailUpError(400, f"Invalid email address: {body.get('Email')!r}")
        rec = self.find(email)
        if rec is None:
            rec = self._create(email)
        for item in body.get("Fields") or []:
            try:
                fid = int(item.get("Id"))
            except (TypeError, ValueError):
                raise MailUpError(400, f"Invalid field: {item!r}") from None
            if fid not in self.fields:
                raise MailUpError(400, f"Field {fid} does not exist")
            value = "" if item.get("Value") is None else str(item.get("Value"))
            if len(value) > 200:
                raise MailUpError(400, f"Field {fid} longer than 200 characters")
            if value or clear_empty:
                rec["fields"][fid] = value
        for key, attr in (("MobileNumber", "mobile_number"), ("MobilePrefix", "mobile_prefix")):
            if body.get(key):
                rec[attr] = str(body[key])
        member = self._membership(rec, list_id)
        current = member["status"]
        if optout:
            if current != "unsubscribed":
                self._set_status(rec, list_id, "unsubscribed", optout_type=4,
                                 optout_subtype=41)
        elif current is None:
            self._set_status(rec, list_id, "pending" if confirm else "subscribed")
        elif confirm and current == "subscribed":
            self._set_status(rec, list_id, "pending")
        elif (confirm and current == "unsubscribed"
              and member["optout_type"] not in _NO_FORCE):
            # A re-opt-in through the confirmation flow (UNCONFIRMED, see docs).
            self._set_status(rec, list_id, "pending")
        return rec

    # -- webhooks ----------------------------------------------------------------------------
    def _fire(self, event: str, rec: dict[str, Any], list_id: str | None, source: str, *,
              reason: str = "", email: str | None = None) -> None:
        member = rec["lists"].get(list_id or "", {})
        values = {
            "EventDate": _event_date(_now()),
            "IdConsole": "12345", "IdList": list_id or "", "IdNL": "", "EventType": event,
            "EventSource": source, "Reason": reason, "Email": email or rec["email"],
            "Prefix": rec["mobile_prefix"], "Number": rec["mobile_number"],
            "Groups": ",".join(sorted(member.get("groups", set()), key=int)),
            "Channel": "1",
            **{f"Field{fid:02d}": value for fid, value in rec["fields"].items()},
        }
        for hook in self.hooks:
            if hook["event"] != event or (hook.get("list") and hook["list"] != list_id):
                continue
            if hook.get("sources") and source not in hook["sources"]:
                continue
            pairs = [(name, values.get(placeholder.strip("[]"), ""))
                     for name, placeholder in hook["params"].items()]
            query = urlencode(pairs)
            if hook.get("encrypted"):
                query = quote(encrypt_payload(query, hook["key"]), safe="")
            delivery = {"hook": hook["id"], "event": event, "email": values["Email"],
                        "list": list_id, "attempts": 0, "status": None, "delivered": False,
                        "payload": query}
            self.deliveries.append(delivery)
            self._schedule(hook, delivery)

    def _schedule(self, hook: dict[str, Any], delivery: dict[str, Any]) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = self._loop  # called from another thread: hand over to the server's loop
        if loop is not None and loop.is_running():
            def start() -> None:
                task = loop.create_task(self._deliver_async(hook, delivery))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            loop.call_soon_threadsafe(start)
            return
        threading.Thread(target=self._deliver_sync, args=(hook, delivery), daemon=True).start()

    def _request_args(self, hook: dict[str, Any], delivery: dict[str, Any]) -> dict[str, Any]:
        if hook["method"] == "GET":
            sep = "&" if "?" in hook["url"] else "?"
            return {"method": "GET", "url": f"{hook['url']}{sep}{delivery['payload']}"}
        return {"method": "POST", "url": hook["url"], "content": delivery["payload"].encode(),
                "headers": {"Content-Type": "application/x-www-form-urlencoded"}}

    async def _deliver_async(self, hook: dict[str, Any], delivery: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            for delay in [0.0, *self.retry_delays]:
                await asyncio.sleep(delay)
                try:
                    response = await client.request(**self._request_args(hook, delivery))
                    status: int | None = response.status_code
                except httpx.HTTPError:
                    status = None
                if self._record(delivery, status):
                    return

    def _deliver_sync(self, hook: dict[str, Any], delivery: dict[str, Any]) -> None:
        with httpx.Client(timeout=5) as client:
            for delay in [0.0, *self.retry_delays]:
                time.sleep(delay)
                try:
                    status: int | None = client.request(
                        **self._request_args(hook, delivery)).status_code
                except httpx.HTTPError:
                    status = None
                if self._record(delivery, status):
                    return

    def _record(self, delivery: dict[str, Any], status: int | None) -> bool:
        with self.lock:
            delivery["attempts"] += 1
            delivery["status"] = status
            # What MailUp counts as a "successful handshake" is UNCONFIRMED: any 2xx.
            delivery["delivered"] = status is not None and 200 <= status < 300
            return bool(delivery["delivered"])

    # -- harness hooks -----------------------------------------------------------------------
    @_locked
    def unsubscribe(self, email: str, list_id: str) -> dict[str, Any]:
        """A recipient clicks "unsubscribe" in a message (type 2, subtype 21)."""
        rec = self.find(email)
        if rec is None or list_id not in rec["lists"]:
            raise KeyError(email)
        self._set_status(rec, list_id, "unsubscribed", optout_type=2, optout_subtype=21)
        self._fire("UNSUBSCRIBE", rec, list_id, "RECIPIENT", reason="2")
        return {"email": rec["email"], "list": list_id, "status": "unsubscribed"}

    def expire_sessions(self) -> None:
        self.access.clear()

    def state(self) -> dict[str, Any]:
        contacts = []
        for rec in self.recipients.values():
            contacts.append({
                "email": rec["email"], "ids": {"mailup": str(rec["id"])},
                "fields": {self.fields[fid]: value for fid, value in rec["fields"].items()
                           if fid in self.fields},
                "lists": {lid: {"status": m["status"],
                                "groups": sorted(self.groups[g]["name"] for g in m["groups"]
                                                 if g in self.groups)}
                          for lid, m in rec["lists"].items() if m["status"]},
                "deleted": rec["deleted"],
            })
        return {"contacts": contacts}

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
            settings["ca_path"] = self.ca_path
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

    # -- plumbing: auth, rate limit, JSON ---------------------------------------------------------
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

    def _console(self, handler: Callable[[_Call], Any], *, status: int = 200
                 ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            self._loop = asyncio.get_running_loop()
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
                    result = handler(_Call(request, body))
            except MailUpError as exc:
                return envelope(exc.status, exc.description)
            if result is None:
                return Response(b"", status_code=200)
            return JSONResponse(result, status_code=status)
        return endpoint

    def _page(self, items: list[Any], call: _Call) -> dict[str, Any]:
        given = call.q("pageSize") is not None or call.q("pageNumber") is not None
        try:
            size = int(call.q("pageSize") or 20)
            number = int(call.q("pageNumber") or 0)
        except ValueError:
            raise MailUpError(400, "Invalid paging parameters") from None
        if size < 1 or number < 0:
            raise MailUpError(400, "Invalid paging parameters")
        items = self._filtered(items, call.q("filterby"))
        skipped = size * number
        return {"IsPaginated": given, "Items": items[skipped:skipped + size],
                "PageNumber": number, "PageSize": size, "Skipped": skipped,
                "TotalElementsCount": len(items)}

    @staticmethod
    def _filtered(items: list[dict[str, Any]], expression: str | None) -> list[dict[str, Any]]:
        if not expression:
            return items
        match = _FILTER.match(expression)
        if not match:
            raise MailUpError(400, f"Invalid filterby expression: {expression}")
        key, op, _, value = match.groups()
        if op == "==":
            return [i for i in items if str(i.get(key)) == value]
        return [i for i in items if value in str(i.get(key, ""))]  # case-sensitive

    # -- shapes -----------------------------------------------------------------------------------
    def _recipient_json(self, rec: dict[str, Any]) -> dict[str, Any]:
        return {"Fields": [{"Description": name, "Id": fid, "Value": rec["fields"].get(fid, "")}
                           for fid, name in sorted(self.fields.items())],
                "Name": rec["name"], "idRecipient": rec["id"], "Email": rec["email"],
                "MobileNumber": rec["mobile_number"] or None,
                "MobilePrefix": rec["mobile_prefix"] or None}

    def _group_json(self, gid: str) -> dict[str, Any]:
        group = self.groups[gid]
        count = sum(1 for r in self.recipients.values()
                    if gid in r["lists"].get(group["list"], {}).get("groups", ()))
        return {"Count": count, "Deletable": group["deletable"], "Name": group["name"],
                "Notes": group["notes"], "idGroup": int(gid), "idList": int(group["list"])}

    def _members(self, list_id: str, status: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.recipients.values() if not r["deleted"]
                and r["lists"].get(list_id, {}).get("status") is not None
                and (status is None or r["lists"][list_id]["status"] == status)]

    # -- REST handlers ----------------------------------------------------------------------------
    def _lists(self, call: _Call) -> Any:
        return self._page([{"Company": "", "Description": v["description"], "IdList": int(k),
                            "ListGuid": v["guid"], "Name": v["name"]}
                           for k, v in self.lists.items()], call)

    def _user_lists(self, call: _Call) -> Any:
        return self._page([{"Company": "", "Description": v["description"], "Name": v["name"],
                            "idList": int(k), "listGuid": v["guid"]}
                           for k, v in self.lists.items()], call)

    def _list_groups(self, call: _Call) -> Any:
        list_id = call.path["id"]
        self._list(list_id)
        return self._page([self._group_json(g) for g, v in self.groups.items()
                           if v["list"] == list_id], call)

    def _create_group(self, call: _Call) -> Any:
        list_id = call.path["id"]
        self._list(list_id)
        body = call.body if isinstance(call.body, dict) else {}
        name = str(body.get("Name") or "").strip()
        if not name:
            raise MailUpError(400, "Group name is required")
        gid = str(self._next("group"))
        self.groups[gid] = {"list": list_id, "name": name, "notes": str(body.get("Notes") or ""),
                            "deletable": bool(body.get("Deletable", True))}
        return self._group_json(gid)

    def _delete_group(self, call: _Call) -> Any:
        gid = call.path["gid"]
        group = self._group(gid)
        if group["list"] != call.path["id"]:
            raise MailUpError(404, f"Group {gid} not found in list {call.path['id']}")
        for rec in self.recipients.values():
            rec["lists"].get(group["list"], {}).get("groups", set()).discard(gid)
        del self.groups[gid]
        return None

    def _listing(self, call: _Call) -> Any:
        list_id = call.path["id"]
        self._list(list_id)
        status = {"subscribed": "subscribed", "unsubscribed": "unsubscribed",
                  "pending": "pending"}.get(call.path["status"].lower())
        if status is None:
            raise MailUpError(404, f"Unknown listing {call.path['status']}")
        return self._page([self._recipient_json(r) for r in self._members(list_id, status)],
                          call)

    def _optins(self, call: _Call) -> Any:
        list_id = call.path["id"]
        self._list(list_id)
        items = []
        for rec in self._members(list_id):
            m = rec["lists"][list_id]
            items.append({
                "Email": rec["email"], "Optin_Date": _api_date(m["optin_date"]),
                "Optin_Request_Date": _api_date(m["optin_request_date"]),
                "Optin_Request_IP": None, "Optout_Date": _api_date(m["optout_date"]),
                "Optout_MsgID": m["optout_nl"], "Optout_Subtype": m["optout_subtype"],
                "Optout_Type": m["optout_type"],
                "Status": {"subscribed": "OPTIN", "unsubscribed": "OPTOUT",
                           "pending": "PENDING"}[m["status"]],
                "idRecipient": rec["id"]})
        return self._page(items, call)

    def _group_members(self, call: _Call) -> Any:
        gid = call.path["id"]
        group = self._group(gid)
        return self._page([self._recipient_json(r) for r in self._members(group["list"])
                           if gid in r["lists"][group["list"]]["groups"]], call)

    def _recipient_groups(self, call: _Call) -> Any:
        list_id = call.path["id"]
        self._list(list_id)
        rec = self._recipient(call.path["rid"])
        gids = rec["lists"].get(list_id, {}).get("groups", set())
        return self._page([self._group_json(g) for g in sorted(gids, key=int)
                           if g in self.groups], call)

    def _subscribe_one(self, call: _Call) -> Any:
        list_id = call.path["id"]
        self._list(list_id)
        return self._upsert(call.body, list_id, confirm=_flag(call.q("ConfirmEmail")))["id"]

    def _subscribe_group(self, call: _Call) -> Any:
        gid = call.path["id"]
        group = self._group(gid)
        rec = self._upsert(call.body, group["list"], confirm=_flag(call.q("ConfirmEmail")))
        rec["lists"][group["list"]]["groups"].add(gid)
        return rec["id"]

    def _group_import(self, call: _Call) -> Any:
        return self._import(call, group=True)

    def _import(self, call: _Call, *, group: bool = False) -> Any:
        if group:
            gid: str | None = call.path["id"]
            list_id = self._group(call.path["id"])["list"]
        else:
            gid, list_id = None, call.path["id"]
            self._list(list_id)
        if not isinstance(call.body, list):
            raise MailUpError(400, "Invalid request: expected an array of recipients")
        confirm = _flag(call.q("ConfirmEmail"))
        optout = (call.q("importType") or "").lower() == "asoptout"
        clear = _flag(call.q("clearMissingOrEmptyFields"))
        replace = _flag(call.q("removeFromPrevGroups"))
        counts = {"created": 0, "updated": 0, "valid": 0, "invalid": 0}
        for row in call.body:
            existed = isinstance(row, dict) and self.find(str(row.get("Email") or "")) is not None
            try:
                rec = self._upsert(row, list_id, confirm=confirm, optout=optout,
                                   clear_empty=clear)
            except MailUpError:
                counts["invalid"] += 1
                continue
            counts["valid"] += 1
            counts["updated" if existed else "created"] += 1
            if gid is not None:
                groups = rec["lists"][list_id]["groups"]
                if replace:
                    groups.clear()
                groups.add(gid)
        import_id = self._next("import")
        self.imports[import_id] = {"polls": 0, **counts}
        return import_id

    def _import_status(self, call: _Call) -> Any:
        try:
            item = self.imports[int(call.path["id"])]
        except (KeyError, ValueError):
            raise MailUpError(404, f"Import {call.path['id']} not found") from None
        item["polls"] += 1
        return self._import_json(int(call.path["id"]), item)

    def _import_json(self, import_id: int, item: dict[str, Any]) -> dict[str, Any]:
        return {"idImport": import_id, "Completed": item["polls"] > self.import_polls,
                "UpdatedRecipients": item["updated"], "ValidRecipients": item["valid"],
                "CreatedRecipients": item["created"], "ImportedRecipients": item["valid"],
                "NotValidRecipients": item["invalid"]}

    def _all_imports(self, call: _Call) -> Any:
        return self._page([self._import_json(k, v) for k, v in self.imports.items()], call)

    def _force(self, rec: dict[str, Any], list_id: str) -> None:
        member = self._membership(rec, list_id)
        if member["status"] == "unsubscribed" and member["optout_type"] in _NO_FORCE:
            raise MailUpError(400, "Recipient cannot be subscribed: it bounced or "
                                   "complained of spam")
        self._set_status(rec, list_id, "subscribed")

    def _force_list(self, call: _Call) -> Any:
        list_id = call.path["id"]
        self._list(list_id)
        self._force(self._recipient(call.path["rid"]), list_id)
        return None

    def _force_group(self, call: _Call) -> Any:
        gid = call.path["id"]
        group = self._group(gid)
        rec = self._recipient(call.path["rid"])
        self._force(rec, group["list"])
        rec["lists"][group["list"]]["groups"].add(gid)
        return None

    def _unsubscribe_list(self, call: _Call) -> Any:
        list_id = call.path["id"]
        self._list(list_id)
        rec = self._recipient(call.path["rid"])
        if rec["lists"].get(list_id, {}).get("status") is None:
            raise MailUpError(404, f"Recipient {rec['id']} is not in list {list_id}")
        self._set_status(rec, list_id, "unsubscribed", optout_type=1, optout_subtype=None)
        return None

    def _remove_group(self, call: _Call) -> Any:
        group = self._group(call.path["id"])
        rec = self._recipient(call.path["rid"])
        rec["lists"].get(group["list"], {}).get("groups", set()).discard(call.path["id"])
        return None

    def _remove_list(self, call: _Call) -> Any:
        self._list(call.path["id"])
        rec = self._recipient(call.path["rid"])
        if rec["lists"].pop(call.path["id"], None) is None:
            raise MailUpError(404, f"Recipient {rec['id']} is not in list {call.path['id']}")
        return None

    def _delete_recipient(self, call: _Call) -> Any:
        rec = self._recipient(call.path["rid"])
        rec["lists"].clear()
        rec["deleted"] = True
        self.by_email.pop(rec["email"], None)
        return None

    def _update_detail(self, call: _Call) -> Any:
        body = call.body if isinstance(call.body, dict) else {}
        rec = self._recipient(body.get("idRecipient"))
        email = str(body.get("Email") or rec["email"]).strip().lower()
        if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", email):
            raise MailUpError(400, f"Invalid email address: {body.get('Email')!r}")
        other = self.find(email)
        if other is not None and other["id"] != rec["id"]:
            raise MailUpError(400, f"Email {email} already belongs to recipient {other['id']}")
        if email != rec["email"]:
            self.by_email.pop(rec["email"], None)
            rec["email"] = email
            self.by_email[email] = rec["id"]
        for item in body.get("Fields") or []:
            fid = int(item.get("Id"))
            if fid not in self.fields:
                raise MailUpError(400, f"Field {fid} does not exist")
            rec["fields"][fid] = "" if item.get("Value") is None else str(item["Value"])
        if "Name" in body:
            rec["name"] = str(body.get("Name") or "")
        return self._recipient_json(rec)

    def _dynamic_fields(self, call: _Call) -> Any:
        return self._page([{"Description": name, "Id": fid}
                           for fid, name in sorted(self.fields.items())], call)

    def _auth_info(self, call: _Call) -> Any:
        return {"Company": "crmsync emulator", "Username": self.credentials[2], "UID": "12345"}

    def _create_message(self, call: _Call) -> Any:
        list_id = call.path["id"]
        self._list(list_id)
        body = call.body if isinstance(call.body, dict) else {}
        mid = self._next("message")
        self.messages[mid] = {"list": list_id, "subject": str(body.get("Subject") or "")}
        return {"idMessage": mid}

    def _list_messages(self, call: _Call) -> Any:
        list_id = call.path["id"]
        self._list(list_id)
        return self._page([{"CreationDate": "2020-01-27 10:05:53Z", "Notes": "",
                            "Subject": m["subject"], "idList": int(list_id), "idMessage": k,
                            "ServiceType": 0}
                           for k, m in self.messages.items() if m["list"] == list_id], call)

    def _message(self, mid: Any) -> dict[str, Any]:
        try:
            return self.messages[int(mid)]
        except (KeyError, TypeError, ValueError):
            raise MailUpError(404, f"Message {mid} not found") from None

    def _send_one(self, call: _Call) -> Any:
        body = call.body if isinstance(call.body, dict) else {}
        self._message(body.get("idMessage"))
        email = str(body.get("Email") or "").strip().lower()
        ok = bool(re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", email))
        if ok:
            self.sent.append({"message": int(body["idMessage"]), "to": [email]})
        return {"Id": len(self.sent), "InvalidRecipients": [] if ok else [{"Email": email}],
                "Sent": int(ok), "UnprocessedRecipients": [], "idMessage": body["idMessage"]}

    def _send_group(self, call: _Call) -> Any:
        return self._send_to(call, group=True)

    def _send_to(self, call: _Call, *, group: bool = False) -> Any:
        mid = int(call.path["mid"])
        message = self._message(mid)
        if group:
            gid: str | None = call.path["id"]
            list_id = self._group(call.path["id"])["list"]
        else:
            gid, list_id = None, call.path["id"]
            self._list(list_id)
        if message["list"] != list_id:
            raise MailUpError(400, f"Message {mid} does not belong to list {list_id}")
        to = [r["email"] for r in self._members(list_id, "subscribed")
              if gid is None or gid in r["lists"][list_id]["groups"]]
        self.sent.append({"message": mid, "to": to, "list": list_id, "group": gid})
        return {"idMessage": mid, "Sent": len(to), "UnprocessedRecipients": [],
                "InvalidRecipients": []}

    # -- OAuth and transactional -------------------------------------------------------------
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
            self.sent.append({"transactional": True, "to": to, "subject": body.get("Subject")})
            number = len(self.sent)
        return JSONResponse({"Status": "done", "Code": "0", "Message": f"Message {number}"})

    # -- routes ---------------------------------------------------------------------------------
    def app(self) -> ASGIApp:
        # uvicorn reads a bound method as an ASGI2 app (its __call__ is no coroutine
        # function), so the harness's app is handed over inside a plain function.
        inner = super().app()

        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            await inner(scope, receive, send)

        return asgi

    def routes(self) -> list[BaseRoute]:
        c = self._console
        table: list[tuple[str, Callable[[_Call], Any], list[str]]] = [
            ("/List", self._lists, ["GET"]),
            ("/User/Lists", self._user_lists, ["GET"]),
            ("/List/{id}/Groups", self._list_groups, ["GET"]),
            ("/List/{id}/Group", self._create_group, ["POST"]),
            ("/List/{id}/Group/{gid}", self._delete_group, ["DELETE"]),
            ("/List/{id}/Recipients/EmailOptins", self._optins, ["GET"]),
            ("/List/{id}/Recipients/{status}", self._listing, ["GET"]),
            ("/List/{id}/Recipients", self._import, ["POST"]),
            ("/Group/{id}/Recipients", self._group_import, ["POST"]),
            ("/Group/{id}/Recipients", self._group_members, ["GET"]),
            ("/List/{id}/Recipient/{rid}/Groups", self._recipient_groups, ["GET"]),
            ("/List/{id}/Recipient", self._subscribe_one, ["POST"]),
            ("/Group/{id}/Recipient", self._subscribe_group, ["POST"]),
            ("/List/{id}/Recipient/{rid}", self._remove_list, ["DELETE"]),
            ("/Recipients/{rid}", self._delete_recipient, ["DELETE"]),
            ("/Import/{id}", self._import_status, ["GET"]),
            ("/Imports", self._all_imports, ["GET"]),
            ("/List/{id}/Subscribe/{rid}", self._force_list, ["POST"]),
            ("/Group/{id}/Subscribe/{rid}", self._force_group, ["POST"]),
            ("/List/{id}/Unsubscribe/{rid}", self._unsubscribe_list, ["DELETE"]),
            ("/Group/{id}/Unsubscribe/{rid}", self._remove_group, ["DELETE"]),
            ("/Recipient/Detail", self._update_detail, ["PUT"]),
            ("/Recipient/DynamicFields", self._dynamic_fields, ["GET"]),
            ("/Authentication/Info", self._auth_info, ["GET"]),
            ("/List/{id}/Email", self._create_message, ["POST"]),
            ("/List/{id}/Emails", self._list_messages, ["GET"]),
            ("/Email/Send", self._send_one, ["POST"]),
            ("/List/{id}/Email/{mid}/Send", self._send_to, ["POST"]),
            ("/Group/{id}/Email/{mid}/Send", self._send_group, ["POST"]),
        ]
        return [Route(OAUTH, self._token, methods=["POST"]),
                Route(TRANSACTIONAL, self._transactional, methods=["POST"]),
                *(Route(CONSOLE + path, c(handler), methods=methods)
                  for path, handler, methods in table)]

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
            Route("/_emulator/export", self._control(lambda body: self.export_unsubscribers()),
                  methods=["POST"]),
        ]

    def _control(self, action: Callable[[dict[str, Any]], dict[str, Any]]
                 ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            self._loop = asyncio.get_running_loop()
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
        self._loop = asyncio.get_running_loop()
        with self.lock:
            if request.method == "GET":
                return JSONResponse({"hooks": [{k: v for k, v in h.items() if k != "key"}
                                               for h in self.hooks],
                                     "deliveries": [dict(d) for d in self.deliveries]})
            if request.method == "DELETE":
                self.hooks.clear()
                self.deliveries.clear()
                return JSONResponse({"ok": True})
        body = json.loads(await request.body() or b"{}")
        try:
            hook = self.add_webhook(**body)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"id": hook["id"]})

    # -- console and recipient actions (these fire webhooks) --------------------------------------
    def add_webhook(self, *, url: str, event: str, method: str = "POST",
                    encrypted: bool = False, key: str = "", params: dict[str, str] | None = None,
                    list: str | None = None, sources: list[str] | None = None
                    ) -> dict[str, Any]:
        """Configure a webhook as the console's Developer's Corner would."""
        event = event.upper()
        if event not in ("SUBSCRIBE", "UNSUBSCRIBE", "CHANGEPROFILE", "DELETE"):
            raise ValueError(f"unknown event {event}")
        if encrypted and not key:
            raise ValueError("an encrypted webhook needs a key")
        with self.lock:
            hook = {"id": self._next("hook"), "url": url, "event": event,
                    "method": method.upper(), "encrypted": bool(encrypted), "key": key,
                    "params": dict(params or {"email": "[Email]", "list": "[IdList]",
                                              "date": "[EventDate]", "type": "[EventType]",
                                              "reason": "[Reason]", "groups": "[Groups]"}),
                    "list": None if list is None else str(list), "sources": sources}
            self.hooks.append(hook)
        return hook

    def _known(self, email: str) -> dict[str, Any]:
        rec = self.find(str(email))
        if rec is None:
            raise KeyError(email)
        return rec

    @_locked
    def confirm(self, body: dict[str, Any]) -> dict[str, Any]:
        rec, list_id = self._known(body["email"]), str(body["list"])
        if rec["lists"].get(list_id, {}).get("status") != "pending":
            raise ValueError(f"{rec['email']} is not pending on list {list_id}")
        self._set_status(rec, list_id, "subscribed")
        self._fire("SUBSCRIBE", rec, list_id, "RECIPIENT")
        return {"email": rec["email"], "list": list_id, "status": "subscribed"}

    @_locked
    def form_subscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        list_id = str(body["list"])
        self._list(list_id)
        names = {v: k for k, v in self.fields.items()}
        fields = [{"Id": names[k], "Value": v} for k, v in (body.get("fields") or {}).items()]
        rec = self._upsert({"Email": body["email"], "Fields": fields}, list_id,
                           confirm=bool(body.get("confirm", False)))
        self._set_groups(rec, list_id, body.get("groups"))
        status = rec["lists"][list_id]["status"]
        if status == "subscribed":
            self._fire("SUBSCRIBE", rec, list_id, "RECIPIENT")
        return {"email": rec["email"], "list": list_id, "status": status}

    def _set_groups(self, rec: dict[str, Any], list_id: str, groups: Any) -> None:
        if groups is None:
            return
        wanted = set()
        for value in groups:
            match = [g for g, v in self.groups.items()
                     if v["list"] == list_id and (v["name"] == value or g == str(value))]
            if not match:
                raise ValueError(f"list {list_id} has no group {value!r}")
            wanted.add(match[0])
        rec["lists"][list_id]["groups"] = wanted

    @_locked
    def change_profile(self, body: dict[str, Any]) -> dict[str, Any]:
        rec, list_id = self._known(body["email"]), str(body["list"])
        names = {v: k for k, v in self.fields.items()}
        for name, value in (body.get("fields") or {}).items():
            rec["fields"][names[name]] = str(value)
        self._membership(rec, list_id)
        self._set_groups(rec, list_id, body.get("groups"))
        self._fire("CHANGEPROFILE", rec, list_id, "RECIPIENT")
        return {"email": rec["email"]}

    @_locked
    def change_email(self, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._known(body["email"])
        new = str(body["new_email"]).strip().lower()
        if self.find(new) is not None:
            raise ValueError(f"{new} already exists")
        old = rec["email"]
        active = [lid for lid, m in rec["lists"].items() if m["status"] == "subscribed"]
        for list_id in active:
            self._fire("UNSUBSCRIBE", rec, list_id, "CONSOLE", reason="0", email=old)
        self.by_email.pop(old, None)
        rec["email"] = new
        self.by_email[new] = rec["id"]
        for list_id in active:
            self._fire("SUBSCRIBE", rec, list_id, "CONSOLE")
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
                self._set_status(rec, list_id, "unsubscribed", optout_type=code,
                                 optout_subtype=sub)
                self._fire("UNSUBSCRIBE", rec, list_id, "RECIPIENT", reason=str(code))
        return {"email": rec["email"], "lists": targets}

    @_locked
    def console_delete(self, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._known(body["email"])
        lists = list(rec["lists"]) or [None]
        for list_id in lists:
            self._fire("DELETE", rec, list_id, "CONSOLE")
        rec["lists"].clear()
        rec["deleted"] = True
        self.by_email.pop(rec["email"], None)
        return {"email": rec["email"], "deleted": True}

    @_locked
    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"rate_limit", "token_ttl", "import_polls",
                               "webhook_retry_delays"}
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
        if "rate_limit" in body:
            self.rate_limit = _num(body["rate_limit"], None)
        if "token_ttl" in body:
            self.token_ttl = float(body["token_ttl"])
        if "import_polls" in body:
            self.import_polls = int(body["import_polls"])
        if "webhook_retry_delays" in body:
            self.retry_delays = [float(x) for x in body["webhook_retry_delays"]]
        return {"rate_limit": self.rate_limit, "token_ttl": self.token_ttl,
                "import_polls": self.import_polls, "webhook_retry_delays": self.retry_delays}

    # -- the batch file space ----------------------------------------------------------------------
    def _space(self, sub: str) -> Path:
        if self.files_dir is None:
            raise ValueError("the emulator has no file space: start it with files_dir=<folder>")
        folder = self.files_dir / sub
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @_locked
    def import_files(self) -> dict[str, Any]:
        """Import every complete file in ``in/`` (its manifest present and matching)."""
        inbox = self._space("in")
        done = self._space("in/done")
        report: dict[str, Any] = {"imported": [], "skipped": []}
        for path in sorted(inbox.iterdir()):
            name = path.name
            if (not path.is_file() or name.startswith(".") or name.endswith(
                    (".manifest.json", ".tmp", ".part", ".partial"))):
                continue
            manifest_path = inbox / f"{name}.manifest.json"
            if not manifest_path.exists():
                report["skipped"].append({"file": name, "why": "no manifest yet"})
                continue
            data = path.read_bytes()
            if name.endswith(".zip"):
                # crmsync zips on request; the manifest's hash is the CSV's inside.
                try:
                    with zipfile.ZipFile(io.BytesIO(data)) as archive:
                        data = archive.read(archive.namelist()[0])
                except (zipfile.BadZipFile, IndexError):
                    report["skipped"].append({"file": name, "why": "not a readable zip"})
                    continue
            try:
                manifest = json.loads(manifest_path.read_text())
                complete = (manifest.get("file") == name and manifest.get("sha256")
                            == hashlib.sha256(data).hexdigest())
            except ValueError:
                complete = False
            if not complete:
                report["skipped"].append({"file": name, "why": "manifest does not match"})
                continue
            result = self._import_csv(data)
            result["file"] = name
            if result["rows"] != manifest.get("rows"):
                result["errors"].append(f"manifest says {manifest.get('rows')} rows, "
                                        f"file has {result['rows']}")
            report["imported"].append(result)
            shutil.move(str(path), str(done / name))
            shutil.move(str(manifest_path), str(done / manifest_path.name))
        return report

    def _import_csv(self, data: bytes) -> dict[str, Any]:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("cp1252")
        first = text.split("\n", 1)[0]
        delimiter = max(";,|\t", key=first.count)
        quote_char = "'" if first.startswith("'") else '"'
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                            quotechar=quote_char)
        header = [h.strip() for h in next(reader, [])]
        lowered = [h.lower() for h in header]
        errors: list[str] = []
        rows = applied = 0
        if "111" not in header:
            return {"rows": 0, "applied": 0, "errors": ["header lacks 111 (email)"]}
        status_col = self.file_status_column.lower()
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            rows += 1
            line = reader.line_num
            if len(row) != len(header):
                errors.append(f"line {line}: {len(row)} columns, header has {len(header)}")
                continue
            cells = dict(zip(lowered, row, strict=True))
            list_id = cells.get("idlist", "").strip()
            if list_id not in self.lists:
                errors.append(f"line {line}: unknown list {list_id!r}")
                continue
            status = cells.get(status_col, "OPTIN").strip().upper() or "OPTIN"
            fields = [{"Id": int(h), "Value": cells[h.lower()]} for h in header
                      if h.isdigit() and int(h) in self.fields]
            try:
                rec = self._upsert({"Email": cells["111"], "Fields": fields}, list_id,
                                   confirm=status == "PENDING", optout=status == "OPTOUT")
                if status == "PENDING" and rec["lists"][list_id]["status"] == "subscribed":
                    pass  # a file never demotes a subscribed recipient to pending
                groups = [g for g in re.split(r"[,;]", cells.get("idgroup", "")) if g.strip()]
                names = [g for g in re.split(r"[,;]", cells.get("externalgroupname", ""))
                         if g.strip()]
                if "idgroup" in cells or "externalgroupname" in cells:
                    self._replace_groups(rec, list_id, groups, names)
            except (MailUpError, ValueError) as exc:
                errors.append(f"line {line}: {exc}")
                continue
            applied += 1
        return {"rows": rows, "applied": applied, "errors": errors}

    def _replace_groups(self, rec: dict[str, Any], list_id: str, ids: list[str],
                        names: list[str]) -> None:
        wanted = set()
        for gid in ids:
            if self.groups.get(gid.strip(), {}).get("list") != list_id:
                raise ValueError(f"group {gid} is not in list {list_id}")
            wanted.add(gid.strip())
        for name in names:
            match = [g for g, v in self.groups.items()
                     if v["list"] == list_id and v["name"] == name.strip()]
            if match:
                wanted.add(match[0])
            else:
                gid = str(self._next("group"))
                self.groups[gid] = {"list": list_id, "name": name.strip(), "notes": "",
                                    "deletable": True}
                wanted.add(gid)
        rec["lists"][list_id]["groups"] = wanted

    @_locked
    def export_unsubscribers(self) -> dict[str, Any]:
        """Write the unsubscribers since the last export to ``out/`` (atomically)."""
        out = self._space("out")
        rows = self.optouts[self.exported:]
        stamp = _now().strftime("%Y%m%dT%H%M%S")
        name = f"unsubscribers-{stamp}-{len(self.optouts)}.csv"
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=self.export_separator, lineterminator="\r\n")
        writer.writerow(["email", "idList", "OptOut_Date", "optout_nl", "optout_type",
                         "optout_subtype"])
        for item in rows:
            writer.writerow([item["email"], item["list"], item["at"].strftime("%Y%m%dT%H%M%S"),
                             item["nl"] or "", item["type"],
                             "" if item["subtype"] is None else item["subtype"]])
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(buffer.getvalue().encode(self.export_encoding))
        tmp.replace(out / name)
        self.exported = len(self.optouts)
        return {"file": name, "rows": len(rows)}
