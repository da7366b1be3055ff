"""An emulator of the vTiger webservice (``/webservice.php``) and the vTiger Cloud REST API.

It reproduces what the real vTiger 8.0.0 captures show, quirks included:

- every webservice answer is HTTP 200, failures as ``{"success":false,"error":{...}}``;
  an unknown ``operation`` and ``sync`` with ``modifiedTime=0`` are HTTP 500, empty body;
- each operation reads its parameters from one verb only (``operation`` and
  ``sessionName`` from either): a parameter sent the other way arrives empty;
- ``getchallenge`` tokens live 5 minutes and a new challenge replaces the previous one;
  ``login`` wants ``md5(token + access key)``; sessions end after 1800 s idle or 86400 s;
- most failures say ``ACCESS_DENIED``; VTQL caps at 100 rows; ``update`` blanks the
  fields it is not given, ``revise`` does not;
- ``sync`` returns only the session user's records, pages on the first 100 modification
  stamps and lists deleted ids; ``query_related`` is broken as on 8.0.0;
- ``php8_stock=True``: an unpatched 8.0.0 on PHP 8, whose ``sync`` and ``logout`` answer
  HTTP 500 with an empty body ("Unknown named parameter").

The Cloud flavour lives under ``/restapi/v1/vtiger/default/<operation>`` with HTTP Basic
``username:accessKey`` and 4xx/5xx statuses for failures. Its clock can be moved
forward (``advance(seconds)`` or ``POST /_emulator/advance``) to expire challenges and
sessions without waiting.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import itertools
import json
import random
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crmsync.emulator import Emulator

from ._schema import MODULES, Module
from ._vtql import Query, VtqlError, parse, predicate

__all__ = ["VtigerEmulator"]

CHALLENGE_TTL = 300
SESSION_IDLE = 1800
SESSION_LIFETIME = 86400
SYNC_LIMIT = 100
ADMIN_KEY = "emuAdminKey0001x"  # throw-away keys of the emulator's two users
SALES_KEY = "emuSalesKey0002y"
MULTI_SEPARATOR = " |##| "

# operation -> the verb whose parameters it reads (vtiger_ws_operation.type)
OPERATIONS: dict[str, str] = {
    "getchallenge": "GET", "login": "POST", "logout": "POST", "extendsession": "POST",
    "listtypes": "GET", "describe": "GET", "retrieve": "GET", "create": "POST",
    "update": "POST", "revise": "POST", "delete": "POST", "query": "GET", "sync": "GET",
    "relatedtypes": "GET", "retrieve_related": "GET", "query_related": "GET",
    "add_related": "POST", "me": "GET",
}

_DENIED = "Permission to perform the operation is denied"
_REST_STATUS = {
    "ACCESS_DENIED": 403, "RECORD_NOT_FOUND": 404, "INVALID_USER_CREDENTIALS": 401,
    "AUTHENTICATION_REQUIRED": 401, "UNKNOWN_OPERATION": 404,
}


class WsError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Http500(Exception):
    """The real server dies with an empty HTTP 500 here."""


class Record:
    __slots__ = ("crmid", "deleted", "fields", "module", "mtime")

    def __init__(self, crmid: int, module: str, fields: dict[str, str], mtime: int) -> None:
        self.crmid = crmid
        self.module = module
        self.fields = fields
        self.mtime = mtime
        self.deleted = False


class VtigerEmulator(Emulator):
    """vTiger 8.0.0 webservice and Cloud REST, in memory."""

    name: ClassVar[str] = "vtiger"

    def __init__(self, *, contacts: int = 0, seed: int = 0, timezone: str = "UTC",
                 sync_type_param: bool | str = False, php8_stock: bool | str = False) -> None:
        self.timezone = timezone
        # stock vTiger 8.0.0 on PHP 8: OperationManager passes the parameters by name and
        # sync (modifiedTime vs $mtime) and logout (sessionName vs $sessionId) die with
        # "Unknown named parameter": HTTP 500, empty body (seen on the real server)
        self.php8_stock = str(php8_stock).lower() in ("1", "true", "yes")
        self.tz = ZoneInfo(timezone)
        # forks such as F-RevoCRM register syncType for sync; the stock server does not
        self.sync_type_param = str(sync_type_param).lower() in ("1", "true", "yes")
        self.clock_offset = 0.0
        self.calls: list[dict[str, Any]] = []
        super().__init__(contacts=contacts, seed=seed)

    # -- clock ------------------------------------------------------------------------
    def now(self) -> int:
        return int(time.time() + self.clock_offset)

    def advance(self, seconds: float) -> None:
        """Move the server clock forward (challenge and session expiry)."""
        with self.lock:
            self.clock_offset += seconds

    def stamp(self, epoch: int) -> str:
        return datetime.fromtimestamp(epoch, self.tz).strftime("%Y-%m-%d %H:%M:%S")

    def epoch(self, stamp: str) -> int:
        parsed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=self.tz)
        return int(parsed.timestamp())

    # -- store ------------------------------------------------------------------------
    def reset(self) -> None:
        self.users: dict[int, dict[str, str]] = {
            1: {"user_name": "admin", "first_name": "Admin", "last_name": "Administrator",
                "email1": "admin@example.com", "is_admin": "on", "accesskey": ADMIN_KEY},
            5: {"user_name": "sales", "first_name": "Sam", "last_name": "Sales",
                "email1": "sales@example.com", "is_admin": "off", "accesskey": SALES_KEY},
        }
        self.records: dict[int, Record] = {}
        self.members: dict[int, set[int]] = {}
        self.challenges: dict[str, tuple[str, int]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.by_email: dict[str, set[int]] = {}
        self.version = 0
        self._index: dict[tuple[str, str], tuple[int, list[Any], list[int]]] = {}
        self._ids = itertools.count(1)
        self.calls.clear()
        now = self.now()
        self.campaign_id = self._insert("Campaigns", {
            "campaignname": "Spring Newsletter", "campaigntype": "Email",
            "campaignstatus": "Active", "closingdate": "2030-12-31",
            "assigned_user_id": "19x1"}, now)

    def ws_id(self, record: Record) -> str:
        return f"{MODULES[record.module].id_prefix}x{record.crmid}"

    def _insert(self, module: str, fields: dict[str, str], mtime: int) -> int:
        crmid = next(self._ids)
        stamp = self.stamp(mtime)
        values = {k: v for k, v in fields.items() if v not in ("", None)}
        values.update(createdtime=stamp, modifiedtime=stamp, source="WEBSERVICE",
                      modifiedby=values.get("assigned_user_id", "19x1"))
        if module == "Contacts":
            values["contact_no"] = f"CON{crmid}"
        elif module == "Campaigns":
            values["campaign_no"] = f"CAM{crmid}"
            self.members[crmid] = set()
        record = Record(crmid, module, values, mtime)
        self.records[crmid] = record
        self._reindex_email(record, None)
        self.version += 1
        return crmid

    def _reindex_email(self, record: Record, old: str | None) -> None:
        if record.module != "Contacts":
            return
        if old:
            self.by_email.get(old.lower(), set()).discard(record.crmid)
        new = record.fields.get("email", "")
        if new and not record.deleted:
            self.by_email.setdefault(new.lower(), set()).add(record.crmid)

    def _touch(self, record: Record, user: str) -> None:
        record.mtime = self.now()
        record.fields["modifiedtime"] = self.stamp(record.mtime)
        record.fields["modifiedby"] = user
        self.version += 1

    def render(self, record: Record, columns: list[str] | None = None,
               label: bool = False) -> dict[str, str]:
        module = MODULES[record.module]
        if columns is not None:
            return {c: self._value(record, module, c) for c in columns}
        out = {name: self._value(record, module, name) for name, *_ in module.fields}
        if label:
            out["label"] = " ".join(record.fields.get(f, "") for f in
                                    module.label_fields.split(",")).strip()
        return out

    def _value(self, record: Record, module: Module, column: str) -> str:
        if column == "id":
            return self.ws_id(record)
        value = record.fields.get(column, "")
        if value == "" and module.types().get(column) == "boolean":
            return "0"
        return value

    def seed(self, contacts: int, seed: int) -> None:
        rng = random.Random(seed)
        interests = ["news", "events", "offers", "tech"]
        base = self.now() - 30 * 86400
        for number in range(contacts):
            # a bulk import: the first 150 share one second; then about 3 per second
            mtime = base if number < 150 else base + (number - 150) // 3 + 1
            email = f"contact{seed}-{number}@example.com"
            if number % 10 == 9:
                email = email.capitalize().replace("@example", "@Example")
            crmid = self._insert("Contacts", {
                "firstname": f"First{number}", "lastname": f"Last{number}", "email": email,
                "emailoptout": "1" if number % 7 == 6 else "0",
                "assigned_user_id": "19x5" if number % 5 == 4 else "19x1",
                "cf_901": MULTI_SEPARATOR.join(rng.sample(interests, rng.randint(0, 2))),
            }, mtime)
            if number % 3 == 0:
                self.members[self.campaign_id].add(crmid)

    # -- the neutral view and the control hooks -----------------------------------------
    def state(self) -> dict[str, Any]:
        contacts = []
        memberships: dict[int, list[str]] = {}
        for campaign, ids in self.members.items():
            for crmid in ids:
                memberships.setdefault(crmid, []).append(f"campaign:1x{campaign}")
        hidden = {"createdtime", "modifiedby", "source", "contact_no"}
        for record in self.records.values():
            if record.module != "Contacts":
                continue
            contacts.append({
                "email": record.fields.get("email", ""),
                "ids": {"vtiger": self.ws_id(record)},
                "fields": {k: v for k, v in record.fields.items() if k not in hidden},
                "lists": {key: {"status": "member", "groups": []}
                          for key in sorted(memberships.get(record.crmid, []))},
                "opted_out": record.fields.get("emailoptout") == "1",
                "deleted": record.deleted,
            })
        return {"contacts": contacts}

    def contact(self, email: str) -> Record:
        """The live contact with this address (case-insensitive); KeyError if none."""
        for crmid in sorted(self.by_email.get(email.strip().lower(), set())):
            record = self.records[crmid]
            if not record.deleted:
                return record
        raise KeyError(email)

    def update_contact(self, email: str, fields: dict[str, Any]) -> dict[str, Any]:
        record = self.contact(email)
        types = MODULES["Contacts"].types()
        old_email = record.fields.get("email")
        for name, value in fields.items():
            if name not in types or name == "id":
                raise KeyError(name)
            text = "" if value is None else str(value)
            if types[name] == "boolean":
                text = "1" if text.lower() in ("1", "true", "on", "yes") else "0"
            record.fields[name] = text
        self._reindex_email(record, old_email)
        self._touch(record, record.fields.get("assigned_user_id", "19x1"))
        return self.render(record, label=True)

    def expire_sessions(self) -> None:
        self.sessions.clear()

    def demo_profile(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"base_url": self.base_url, "username": "admin",
                                    "server_timezone": self.timezone}
        if self.ca_path:
            settings["ca_file"] = self.ca_path
        return {
            "settings": settings,
            "secrets": {"CRMSYNC_VTIGER_ACCESS_KEY": ADMIN_KEY},
            "fields": {"firstname": "name", "lastname": "surname"},
            "lists": [
                {"name": "Newsletter", "esp_list": "1", "members": "all",
                 "opt_out": "emailoptout", "groups": {"field": "cf_901"}},
                {"name": "Spring Newsletter", "esp_list": "2",
                 "members": f"campaign:1x{self.campaign_id}"},
            ],
        }

    def fault_response(self, status: int) -> Response:
        headers = {"Retry-After": "1"} if status == 429 else {}
        return JSONResponse({"success": False, "error": {
            "code": "INTERNAL_SERVER_ERROR", "message": f"injected fault {status}"}},
            status_code=status, headers=headers)

    def control_routes(self) -> list[BaseRoute]:
        async def advance(request: Request) -> Response:
            body = json.loads(await request.body() or b"{}")
            self.advance(float(body.get("seconds", 0)))
            return JSONResponse({"ok": True, "now": self.now()})

        return [Route("/_emulator/advance", advance, methods=["POST"])]

    # -- HTTP ---------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/webservice.php", self._webservice, methods=["GET", "POST"]),
            Route("/restapi/v1/vtiger/default/{operation}", self._rest,
                  methods=["GET", "POST"]),
        ]

    async def _inputs(self, request: Request) -> tuple[dict[str, str], dict[str, str]]:
        query = dict(request.query_params)
        form: dict[str, str] = {}
        if request.method == "POST":
            body = (await request.body()).decode("utf-8", errors="replace")
            form = dict(parse_qsl(body, keep_blank_values=True))
        return query, form

    def _log(self, request: Request, operation: str, query: dict[str, str],
             form: dict[str, str]) -> None:
        self.calls.append({"http": request.method, "operation": operation,
                           "query": {k: v for k, v in query.items()},
                           "form": {k: v for k, v in form.items()}})

    async def _webservice(self, request: Request) -> Response:
        query, form = await self._inputs(request)
        anywhere = {**query, **form}
        operation = anywhere.get("operation", "").lower()
        with self.lock:
            self._log(request, operation, query, form)
            verb = OPERATIONS.get(operation)
            if verb is None or operation == "me":
                return Response(status_code=500)
            params = query if verb == "GET" else form
            try:
                if operation in ("getchallenge", "login"):
                    result = getattr(self, f"op_{operation}")(params)
                else:
                    user = self._session_user(anywhere.get("sessionName", ""))
                    result = getattr(self, f"op_{operation}")(params, user)
            except WsError as exc:
                return JSONResponse({"success": False,
                                     "error": {"message": exc.message, "code": exc.code}})
            except Http500:
                return Response(status_code=500)
        return JSONResponse({"success": True, "result": result})

    async def _rest(self, request: Request) -> Response:
        query, form = await self._inputs(request)
        operation = request.path_params["operation"].lower()
        with self.lock:
            self._log(request, operation, query, form)
            user = self._basic_user(request.headers.get("authorization", ""))
            if user is None:
                return _rest_error(401, "INVALID_USER_CREDENTIALS", "Invalid username or password")
            verb = OPERATIONS.get(operation)
            if verb is None or operation in ("getchallenge", "login", "logout"):
                return _rest_error(404, "UNKNOWN_OPERATION", f"Unknown operation {operation}")
            if request.method != verb:
                return _rest_error(405, "METHOD_NOT_ALLOWED",
                                   f"{operation} expects {verb}")
            params = query if verb == "GET" else form
            try:
                result = getattr(self, f"op_{operation}")(params, user)
            except WsError as exc:
                return _rest_error(_REST_STATUS.get(exc.code, 400), exc.code, exc.message)
            except Http500:
                return _rest_error(500, "INTERNAL_SERVER_ERROR", "Internal Server Error")
        return JSONResponse({"success": True, "result": result})

    def _basic_user(self, header: str) -> int | None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            username, _, key = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        for crmid, user in self.users.items():
            if user["user_name"] == username and user["accesskey"] == key:
                return crmid
        return None

    def _session_user(self, name: str) -> int:
        if not name:
            raise WsError("AUTHENTICATION_REQUIRED", "Authencation required")
        session = self.sessions.get(name)
        if session is None:
            raise WsError("INVALID_SESSIONID", "Session Identifier provided is Invalid")
        now = self.now()
        if now - session["created"] > SESSION_LIFETIME:
            del self.sessions[name]
            raise WsError("SESSION_EXPIRED", "Session has expired")
        if now - session["last"] > SESSION_IDLE:
            del self.sessions[name]
            raise WsError("SESSION_LEFT_IDLE", "Session has been left idle for too long")
        session["last"] = now
        return int(session["user"])

    # -- operations ---------------------------------------------------------------------
    def op_getchallenge(self, params: dict[str, str]) -> dict[str, Any]:
        now = self.now()
        token = uuid.uuid4().hex[:13]
        # one live challenge per user: a concurrent getchallenge replaces this one
        self.challenges[params.get("username", "")] = (token, now + CHALLENGE_TTL)
        return {"token": token, "serverTime": now, "expireTime": now + CHALLENGE_TTL}

    def op_login(self, params: dict[str, str]) -> dict[str, Any]:
        username = params.get("username", "")
        challenge = self.challenges.get(username)
        if challenge is None or challenge[1] < self.now():
            raise WsError("INVALID_AUTH_TOKEN", "Specified token is invalid or expired")
        found = [(crmid, u) for crmid, u in self.users.items() if u["user_name"] == username]
        if not found:
            raise WsError("INVALID_USER_CREDENTIALS", "Invalid username or password")
        crmid, user = found[0]
        # a challenge replaced by a concurrent getchallenge ends here, not as a token error:
        # the digest was made from the old token (Login.php compares md5(token + key))
        expected = hashlib.md5((challenge[0] + user["accesskey"]).encode()).hexdigest()  # noqa: S324 - the vendor's scheme
        if params.get("accessKey", "") != expected:
            raise WsError("INVALID_USER_CREDENTIALS", "Invalid username or password")
        # the token stays until it expires or a new getchallenge replaces it (AuthToken.php)
        name = uuid.uuid4().hex[:21]
        now = self.now()
        self.sessions[name] = {"user": crmid, "created": now, "last": now}
        return {"username": username, "first_name": user["first_name"],
                "last_name": user["last_name"], "email": user["email1"], "time_zone": self.timezone,
                "is_admin": user["is_admin"], "sessionName": name, "userId": f"19x{crmid}",
                "version": "0.22", "vtigerVersion": "8.0.0"}

    def op_logout(self, params: dict[str, str], user: int) -> dict[str, str]:
        if self.php8_stock:
            raise Http500
        for name, session in list(self.sessions.items()):
            if session["user"] == user and name == params.get("sessionName"):
                del self.sessions[name]
        return {"message": "successfull"}

    def op_extendsession(self, params: dict[str, str], user: int) -> dict[str, str]:
        return {"userId": f"19x{user}", "version": "0.22", "vtigerVersion": "8.0.0"}

    def op_me(self, params: dict[str, str], user: int) -> dict[str, str]:
        info = self.users[user]
        return {"id": f"19x{user}", "user_name": info["user_name"], "email1": info["email1"],
                "first_name": info["first_name"], "last_name": info["last_name"],
                "is_admin": info["is_admin"], "time_zone": self.timezone}

    def op_listtypes(self, params: dict[str, str], user: int) -> dict[str, Any]:
        names = sorted(MODULES)
        return {"types": names, "information": {
            n: {"isEntity": True, "label": n, "singular": MODULES[n].singular} for n in names}}

    def _module(self, name: str, *, message: str = _DENIED) -> Module:
        if name not in MODULES:
            raise WsError("ACCESS_DENIED", message)
        return MODULES[name]

    def op_describe(self, params: dict[str, str], user: int) -> dict[str, Any]:
        name = params.get("elementType", "")
        return self._module(name, message=f"{_DENIED} for name : {name}").describe()

    def op_relatedtypes(self, params: dict[str, str], user: int) -> dict[str, Any]:
        if params.get("elementType") != "Campaigns":
            raise WsError("ACCESS_DENIED", _DENIED)
        return {"types": ["Contacts"], "information": {
            "Contacts": {"name": "Contacts", "label": "Contacts", "isEntity": "1"}}}

    def _record(self, ws_id: str, module: str | None = None) -> Record:
        prefix, sep, crmid = ws_id.partition("x")
        if not sep or not prefix.isdigit() or not crmid.isdigit():
            raise WsError("ACCESS_DENIED", f"{_DENIED} for id")
        owners = [m for m in MODULES.values() if m.id_prefix == prefix]
        if not owners or (module and owners[0].name != module):
            raise WsError("ACCESS_DENIED", f"{_DENIED} for id")
        record = self.records.get(int(crmid))
        if record is None or record.deleted or record.module != owners[0].name:
            raise WsError("ACCESS_DENIED", _DENIED)
        return record

    def op_retrieve(self, params: dict[str, str], user: int) -> dict[str, str]:
        if params.get("id", "").startswith("19x"):
            crmid = int(params["id"][3:] or 0)
            if crmid not in self.users:
                raise WsError("ACCESS_DENIED", _DENIED)
            info = {k: v for k, v in self.users[crmid].items() if k != "accesskey"}
            return {**info, "id": params["id"]}
        return self.render(self._record(params.get("id", "")), label=True)

    def _element(self, params: dict[str, str]) -> dict[str, str]:
        try:
            element = json.loads(params.get("element", ""))
        except ValueError:
            element = {}
        if not isinstance(element, dict):
            element = {}
        return {str(k): "" if v is None else str(v) for k, v in element.items()}

    def _clean(self, module: Module, element: dict[str, str]) -> dict[str, str]:
        types = module.types()
        out = {}
        for name, value in element.items():
            kind = types.get(name)
            if kind is None or kind == "autogenerated" or name in (
                    "createdtime", "modifiedtime", "modifiedby", "contact_no", "campaign_no"):
                continue  # unknown and read-only fields are ignored, as on the server
            if kind == "boolean":
                value = "1" if value.lower() in ("1", "true", "on", "yes") else "0"
            if kind == "owner" and value and not value.startswith("19x"):
                raise WsError("REFERENCE_INVALID", f"Invalid reference specified for {name}")
            out[name] = value
        return out

    def _mandatory(self, module: Module, fields: dict[str, str]) -> None:
        for name in module.mandatory():
            if not fields.get(name):
                raise WsError("MANDATORY_FIELDS_MISSING", f"{name} does not have a value")

    def op_create(self, params: dict[str, str], user: int) -> dict[str, str]:
        module = self._module(params.get("elementType", ""))
        if module.name == "Users":
            raise WsError("ACCESS_DENIED", _DENIED)
        fields = self._clean(module, self._element(params))
        self._mandatory(module, fields)
        crmid = self._insert(module.name, fields, self.now())
        self.records[crmid].fields["modifiedby"] = f"19x{user}"
        return self.render(self.records[crmid], label=True)

    def _write(self, params: dict[str, str], user: int, *, partial: bool) -> dict[str, str]:
        element = self._element(params)
        if not element.get("id"):
            raise WsError("ACCESS_DENIED", f"{_DENIED} for id")
        record = self._record(element["id"])
        module = MODULES[record.module]
        changes = self._clean(module, element)
        old_email = record.fields.get("email")
        if partial:
            merged = {**record.fields, **changes}
        else:
            # update replaces the record: every editable field not sent is blanked
            kept = {k: v for k, v in record.fields.items() if k in (
                "createdtime", "modifiedtime", "modifiedby", "contact_no", "campaign_no",
                "source")}
            merged = {**kept, **changes}
        self._mandatory(module, merged)
        record.fields = {k: v for k, v in merged.items() if v != ""}
        self._reindex_email(record, old_email)
        self._touch(record, f"19x{user}")
        return self.render(record, label=True)

    def op_update(self, params: dict[str, str], user: int) -> dict[str, str]:
        return self._write(params, user, partial=False)

    def op_revise(self, params: dict[str, str], user: int) -> dict[str, str]:
        return self._write(params, user, partial=True)

    def op_delete(self, params: dict[str, str], user: int) -> dict[str, str]:
        record = self._record(params.get("id", ""))
        record.deleted = True
        self._reindex_email(record, record.fields.get("email"))
        self.by_email.get(record.fields.get("email", "").lower(), set()).discard(record.crmid)
        self._touch(record, f"19x{user}")
        for members in self.members.values():
            members.discard(record.crmid)
        return {"status": "successful"}

    def op_retrieve_related(self, params: dict[str, str], user: int) -> list[dict[str, str]]:
        campaign = self._record(params.get("id", ""), "Campaigns")
        if params.get("relatedType") != "Contacts" or params.get("relatedLabel") != "Contacts":
            raise WsError("ACCESS_DENIED", _DENIED)
        return [self.render(self.records[c]) for c in sorted(self.members[campaign.crmid])
                if not self.records[c].deleted]

    def op_query_related(self, params: dict[str, str], user: int) -> None:
        # vTiger 8.0.0 captures the module as "Contacts;" (and rejects a WHERE): unusable
        raise WsError("UNKOWN_ENTITY", "Relation specified is incorrect")

    def op_add_related(self, params: dict[str, str], user: int) -> dict[str, str]:
        campaign = self._record(params.get("sourceRecordId", ""), "Campaigns")
        contact = self._record(params.get("relatedRecordId", ""), "Contacts")
        if params.get("relationIdLabel") != "Contacts":
            raise WsError("UNKOWN_ENTITY", "Relation specified is incorrect")
        self.members[campaign.crmid].add(contact.crmid)
        return {"message": "successfull"}

    def op_sync(self, params: dict[str, str], user: int) -> dict[str, Any]:
        if self.php8_stock:
            raise Http500
        raw = params.get("modifiedTime", "")
        if raw in ("", "0") or not raw.lstrip("-").isdigit():
            raise Http500  # PHP 8.2 TypeError in date(''), as captured
        module = self._module(params.get("elementType", ""))
        since = int(raw)
        everyone = self.sync_type_param and params.get("syncType") == "application"
        owner = f"19x{user}"
        changed = sorted(
            (r for r in self.records.values() if r.module == module.name and r.mtime > since
             and (everyone or r.fields.get("assigned_user_id") == owner)),
            key=lambda r: (r.mtime, r.crmid))
        if not changed:
            return {"updated": [], "deleted": [], "more": False, "lastModifiedTime": since}
        last = changed[:SYNC_LIMIT][-1].mtime
        page = [r for r in changed if r.mtime <= last]
        return {
            "updated": [self.render(r) for r in page if not r.deleted],
            "deleted": [self.ws_id(r) for r in page if r.deleted],
            "more": len(page) < len(changed),
            "lastModifiedTime": last,
        }

    def op_query(self, params: dict[str, str], user: int) -> list[dict[str, str]]:
        def known(name: str) -> frozenset[str] | None:
            return MODULES[name].field_names if name in ("Contacts", "Campaigns") else None

        try:
            query = parse(params.get("query", ""), known)
        except VtqlError as exc:
            raise WsError(exc.code, exc.message) from None
        for group in query.where:
            for index, condition in enumerate(group):
                if condition.column == "id":
                    values = tuple(v.partition("x")[2] or v for v in condition.values)
                    group[index] = type(condition)("id", condition.op, values)
        return self._run(query)

    def _value_of(self, record: Record, column: str) -> str:
        if column == "id":
            return str(record.crmid)
        return self._value(record, MODULES[record.module], column)

    def _ordered(self, query: Query) -> Iterable[Record]:
        """Candidate rows in the query's order, narrowed through an index when possible."""
        live = [query.where[0]] if len(query.where) == 1 else []
        for group in live:
            for condition in group:
                if condition.column == "email" and condition.op in ("=", "in"):
                    found: set[int] = set().union(*(self.by_email.get(v.lower(), set())
                                                    for v in condition.values))
                    rows = [self.records[i] for i in found]
                    return self._sort(rows, query)
        if query.order_by is None:
            return [r for r in self.records.values() if r.module == query.module and not r.deleted]
        keys, ids = self._sorted(query.module, query.order_by)
        start, stop = 0, len(ids)
        if not query.descending:
            for group in live:
                for condition in group:
                    if condition.column == query.order_by and condition.op in (">", ">=", "="):
                        key = _sort_key(condition.values[0])
                        if condition.op == ">":
                            start = max(start, bisect.bisect_right(keys, (key, float("inf"))))
                        else:
                            start = max(start, bisect.bisect_left(keys, (key, float("-inf"))))
                        if condition.op == "=":
                            stop = min(stop, bisect.bisect_right(keys, (key, float("inf"))))
        # lazily: a page is read from the first match on, not the whole tail
        positions = range(stop - 1, start - 1, -1) if query.descending else range(start, stop)
        return (self.records[ids[i]] for i in positions)

    def _sort(self, rows: list[Record], query: Query) -> list[Record]:
        rows = [r for r in rows if r.module == query.module and not r.deleted]
        if query.order_by is None:
            return sorted(rows, key=lambda r: r.crmid)
        column = query.order_by
        return sorted(rows, key=lambda r: (_sort_key(self._value_of(r, column)), -r.crmid),
                      reverse=query.descending)

    def _sorted(self, module: str, column: str) -> tuple[list[Any], list[int]]:
        cached = self._index.get((module, column))
        if cached and cached[0] == self.version:
            return cached[1], cached[2]
        rows = [r for r in self.records.values() if r.module == module and not r.deleted]
        # equal values come back newest id first, so clients cannot rely on id order
        entries = sorted(((_sort_key(self._value_of(r, column)), -r.crmid), r.crmid)
                         for r in rows)
        keys = [e[0] for e in entries]
        ids = [e[1] for e in entries]
        self._index[(module, column)] = (self.version, keys, ids)
        return keys, ids

    def _run(self, query: Query) -> list[dict[str, str]]:
        rows = self._ordered(query)
        test: Callable[[Record], bool] = predicate(query, self._value_of)
        if query.count:
            return [{"count": str(sum(1 for r in rows if test(r)))}]
        out: list[dict[str, str]] = []
        skipped = 0
        for record in rows:
            if not test(record):
                continue
            if skipped < query.offset:
                skipped += 1
                continue
            if len(out) >= query.limit:
                break
            out.append(self.render(record, query.columns))
        return out


def _sort_key(value: str) -> tuple[int, Any]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value.lower())


def _rest_error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"success": False, "error": {"code": code, "message": message}},
                        status_code=status)
