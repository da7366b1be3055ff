"""Sugar REST v10/v11 over the shared store.

Quirks reproduced: the OAuth2 password grant with one session per user and
``platform``, the ``OAuth-Token`` header, refresh-token rotation (a refresh invalidates
the old refresh and access tokens), 401 ``invalid_grant`` for a stale token,
``{"error","error_message"}`` bodies with their HTTP codes, ``max_num`` defaulting to 20,
``next_offset`` = -1 on the last page, filter operators, ``deleted=true`` including
deleted rows, the ``email`` array that a PUT replaces whole (unspecified flags merged
from the stored address, invalid addresses refused with 422), ``/bulk`` and ``/link``.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from .store import PERSON_MODULES, Address, Person, SugarStore, TableError, TargetList

if TYPE_CHECKING:
    from . import SugarEmulator

__all__ = ["RestApi", "error"]

MAX_NUM_CAP = 1000  # sugar_config['max_record_fetch_size'] default (UNCONFIRMED for Cloud)
_STATUS_TEXT = {200: "OK", 201: "Created", 401: "Unauthorized", 404: "Not Found",
                409: "Conflict", 422: "Unprocessable Entity", 500: "Internal Server Error"}
Result = tuple[int, Any]


class ApiError(Exception):
    def __init__(self, status: int, label: str, message: str) -> None:
        super().__init__(message)
        self.status, self.label, self.message = status, label, message


def error(status: int, label: str, message: str) -> Result:
    return status, {"error": label, "error_message": message}


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _when(value: Any) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise ApiError(422, "invalid_parameter", f"{value!r} is not a date") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def parse_brackets(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """PHP-style ``filter[0][date_modified][$gte]=...`` query parameters as nested data."""
    root: dict[str, Any] = {}
    for key, value in items:
        parts = re.findall(r"[^\[\]]+", key)
        if not parts:
            continue
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def listify(value: Any) -> Any:
        if isinstance(value, dict):
            value = {k: listify(v) for k, v in value.items()}
            if value and all(k.isdigit() for k in value):
                return [value[k] for k in sorted(value, key=int)]
        return value

    return {k: listify(v) for k, v in root.items()}


_OPS = {"$equals", "$not_equals", "$starts", "$ends", "$contains", "$in", "$not_in",
        "$is_null", "$not_null", "$lt", "$lte", "$gt", "$gte"}


class Filter:
    """A Sugar filter expression over one module's rows."""

    def __init__(self, expression: Any, getter: Callable[[Any, str], Any],
                 dates: set[str]) -> None:
        if isinstance(expression, str):
            try:
                expression = json.loads(expression) if expression else []
            except ValueError:
                raise ApiError(422, "invalid_parameter", "filter is not valid JSON") from None
        self.expression = expression if isinstance(expression, list) else [expression]
        self.getter = getter
        self.dates = dates

    def test(self, row: Any) -> bool:
        return all(self._term(term, row) for term in self.expression)

    def _term(self, term: Any, row: Any) -> bool:
        if not isinstance(term, dict):
            raise ApiError(422, "invalid_parameter", f"bad filter term {term!r}")
        for key, value in term.items():
            if key == "$and":
                if not all(self._term(item, row) for item in value):
                    return False
            elif key == "$or":
                if not any(self._term(item, row) for item in value):
                    return False
            elif key.startswith("$"):
                raise ApiError(422, "invalid_parameter", f"Did not recognize the operand: {key}")
            else:
                ops = value if isinstance(value, dict) else {"$equals": value}
                for op, expected in ops.items():
                    if not self._op(key, op, expected, row):
                        return False
        return True

    def _op(self, name: str, op: str, expected: Any, row: Any) -> bool:
        if op not in _OPS:
            raise ApiError(422, "invalid_parameter", f"Did not recognize the operand: {op}")
        actual = self.getter(row, name)
        values = actual if isinstance(actual, list) else [actual]
        if op == "$is_null":
            return all(v in (None, "") for v in values)
        if op == "$not_null":
            return any(v not in (None, "") for v in values)
        if name in self.dates:
            convert: Callable[[Any], Any] = _when
        else:
            def convert(value: Any) -> Any:
                if isinstance(value, bool):
                    return "1" if value else "0"
                return str(value).lower()
        values = [convert(v) for v in values if v is not None]
        if op in ("$in", "$not_in"):
            wanted = {convert(item) for item in (expected or [])}
            hit = any(v in wanted for v in values)
            return hit if op == "$in" else not hit
        target = convert(expected)
        checks: dict[str, Callable[[Any], bool]] = {
            "$equals": lambda v: v == target, "$not_equals": lambda v: v != target,
            "$starts": lambda v: str(v).startswith(str(target)),
            "$ends": lambda v: str(v).endswith(str(target)),
            "$contains": lambda v: str(target) in str(v),
            "$lt": lambda v: v < target, "$lte": lambda v: v <= target,
            "$gt": lambda v: v > target, "$gte": lambda v: v >= target,
        }
        if op == "$not_equals":
            return all(checks[op](v) for v in values)
        return any(checks[op](v) for v in values)

    def lower_bound(self, name: str = "date_modified") -> datetime | None:
        def bound(term: Any) -> datetime | None:
            if not isinstance(term, dict):
                return None
            found: list[datetime] = []
            for key, value in term.items():
                if key == "$and":
                    inner = [b for b in (bound(item) for item in value) if b]
                    if inner:
                        found.append(max(inner))
                elif key == "$or":
                    inner_or = [bound(item) for item in value]
                    if inner_or and all(inner_or):
                        found.append(min(b for b in inner_or if b))
                elif key == name and isinstance(value, dict):
                    for op in ("$gte", "$gt", "$equals"):
                        if op in value:
                            found.append(_when(value[op]))
            return max(found) if found else None

        bounds = [b for b in (bound(term) for term in self.expression) if b]
        return max(bounds) if bounds else None

    def candidates(self, resolve: Callable[[str, list[str]], set[str] | None]) -> set[str] | None:
        """Ids the rows must have, when every branch pins them (``id`` / address $in)."""
        def of(term: Any) -> set[str] | None:
            if not isinstance(term, dict) or len(term) != 1:
                return None
            (key, value), = term.items()
            if key == "$or":
                sets = [of(item) for item in value]
                if not sets or any(s is None for s in sets):
                    return None
                return set().union(*[s for s in sets if s is not None])
            if isinstance(value, dict) and set(value) == {"$in"}:
                return resolve(key, [str(v) for v in value["$in"]])
            return None

        for term in self.expression:
            found = of(term)
            if found is not None:
                return found
        return None


class RestApi:
    """The v10/v11 routes; handlers run under the emulator's lock."""

    def __init__(self, emulator: SugarEmulator) -> None:
        self.emulator = emulator
        self.access: dict[str, tuple[str, str, float]] = {}
        self.refresh: dict[str, tuple[str, str]] = {}
        self.conflicts = 0
        self.token_ttl = 3600.0
        self.grants = 0
        self.refreshes = 0
        self._routes = self._build()

    @property
    def store(self) -> SugarStore:
        return self.emulator.store

    # -- routing -----------------------------------------------------------------------
    def _build(self) -> list[Route]:
        table: list[tuple[str, list[str], Callable[..., Result]]] = [
            ("/rest/{version}/oauth2/token", ["POST"], self.token),
            ("/rest/{version}/ping", ["GET"], self.ping),
            ("/rest/{version}/bulk", ["POST"], self.bulk),
            ("/rest/{version}/ProspectLists/{record}/link", ["POST"], self.link_many),
            ("/rest/{version}/ProspectLists/{record}/link/{link}", ["GET"], self.related),
            ("/rest/{version}/ProspectLists/{record}/link/{link}/{related}",
             ["POST", "DELETE"], self.link_one),
            ("/rest/{version}/{module}/filter", ["GET", "POST"], self.listing),
            ("/rest/{version}/{module}/count", ["GET"], self.count),
            ("/rest/{version}/{module}/{record}", ["GET", "PUT", "DELETE"], self.record),
            ("/rest/{version}/{module}", ["GET", "POST"], self.module),
        ]
        self._handlers = [(Route(path, self._endpoint(handler), methods=methods), handler)
                          for path, methods, handler in table]
        return [route for route, _ in self._handlers]

    def routes(self) -> list[Route]:
        return list(self._routes)

    def _endpoint(self, handler: Callable[..., Result]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            with self.emulator.lock:
                status, payload = self.dispatch(
                    handler, request.method, dict(request.path_params),
                    request.query_params.multi_items(), raw, request.headers.get("OAuth-Token"))
            return JSONResponse(payload, status_code=status)
        return endpoint

    def dispatch(self, handler: Callable[..., Result], method: str, params: dict[str, Any],
                 query: list[tuple[str, str]], raw: bytes, token: str | None,
                 *, authenticated: bool = False) -> Result:
        if handler != self.token and not authenticated:
            refused = self._authenticate(token)
            if refused is not None:
                return refused
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = dict(parse_qsl(raw.decode(errors="replace")))
        try:
            return handler(method, params, parse_brackets(query), body)
        except ApiError as exc:
            return error(exc.status, exc.label, exc.message)
        except TableError as exc:
            return error(422, "invalid_parameter", str(exc))

    # -- auth --------------------------------------------------------------------------
    def _authenticate(self, token: str | None) -> Result | None:
        if not token:
            return error(401, "need_login", "No valid authentication for user.")
        entry = self.access.get(token)
        if entry is None or entry[2] < time.monotonic():
            return error(401, "invalid_grant", "The access token provided is invalid.")
        return None

    def _issue(self, user: str, platform: str) -> dict[str, Any]:
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        self.access[access] = (user, platform, time.monotonic() + self.token_ttl)
        self.refresh[refresh] = (user, platform)
        return {"access_token": access, "expires_in": int(self.token_ttl),
                "token_type": "bearer", "scope": None, "refresh_token": refresh,
                "refresh_expires_in": 1209600, "download_token": secrets.token_hex(16)}

    def _end_sessions(self, user: str, platform: str) -> None:
        for table in (self.access, self.refresh):
            for key in [k for k, v in table.items() if v[0] == user and v[1] == platform]:
                del table[key]

    def token(self, method: str, params: dict[str, Any], query: dict[str, Any],
              body: dict[str, Any]) -> Result:
        if body.get("client_id") != "sugar":
            return error(400, "invalid_client", "Client authentication failed.")
        platform = str(body.get("platform") or "base")
        grant = body.get("grant_type")
        if grant == "password":
            user = str(body.get("username") or "")
            if self.emulator.users.get(user) != body.get("password"):
                return error(401, "need_login",
                             "You must specify a valid username and password.")
            # One session per user and platform: this login ends the earlier one.
            self._end_sessions(user, platform)
            self.grants += 1
            return 200, self._issue(user, platform)
        if grant == "refresh_token":
            owner = self.refresh.get(str(body.get("refresh_token") or ""))
            if owner is None or owner[1] != platform:
                return error(400, "invalid_grant", "Invalid refresh token")
            # Rotation: the old refresh token (and its access token) stop working.
            self._end_sessions(*owner)
            self.refreshes += 1
            return 200, self._issue(*owner)
        return error(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported")

    def expire(self, *, refresh: bool = False) -> None:
        self.access.clear()
        if refresh:
            self.refresh.clear()

    # -- views -------------------------------------------------------------------------
    def person_json(self, person: Person, fields: list[str] | None) -> dict[str, Any]:
        links = person.links if person.deleted else person.live_links()
        email = [{"email_address_id": row.id, "email_address": row.email,
                  "primary_address": link.primary, "reply_to_address": link.reply_to,
                  "invalid_email": row.invalid, "opt_out": row.opt_out}
                 for link in links for row in [self.store.addresses[link.address_id]]]
        full = {"id": person.id, "date_modified": _iso(person.date_modified),
                "date_entered": _iso(person.date_entered), "deleted": person.deleted,
                **person.fields, "email": email, "_module": person.module,
                "_acl": {"fields": {}}}
        if fields is None:
            return full
        keep = {"id", "date_modified", "_module", "_acl", *fields}
        return {key: value for key, value in full.items() if key in keep}

    @staticmethod
    def address_json(row: Address, fields: list[str] | None) -> dict[str, Any]:
        full = {"id": row.id, "email_address": row.email, "email_address_caps": row.caps,
                "opt_out": row.opt_out, "invalid_email": row.invalid,
                "date_created": _iso(row.date_created), "date_modified": _iso(row.date_modified),
                "deleted": row.deleted, "_module": "EmailAddresses"}
        keep = None if fields is None else {"id", "date_modified", "_module", *fields}
        return full if keep is None else {k: v for k, v in full.items() if k in keep}

    def list_json(self, row: TargetList) -> dict[str, Any]:
        return {"id": row.id, "name": row.name, "list_type": row.list_type,
                "date_modified": _iso(row.date_modified), "deleted": row.deleted,
                "entry_count": sum(len(row.live(m)) for m in PERSON_MODULES),
                "_module": "ProspectLists"}

    @staticmethod
    def _fields(value: Any) -> list[str] | None:
        if not value:
            return None
        if isinstance(value, list):
            return [str(item) for item in value]
        return [item.strip() for item in str(value).split(",") if item.strip()]

    # -- handlers ----------------------------------------------------------------------
    def ping(self, method: str, params: dict[str, Any], query: dict[str, Any],
             body: Any) -> Result:
        return 200, "pong"

    def _person_value(self, person: Person, name: str) -> Any:
        if name == "id":
            return person.id
        if name in ("date_modified", "date_entered"):
            return getattr(person, name)
        if name == "deleted":
            return person.deleted
        if name in ("email_addresses.email_address", "email", "email1"):
            return [row.email for _, row in self.store.addresses_of(person)]
        if name in person.fields:
            return person.fields[name]
        if name in self.emulator.known_fields:
            return None
        raise ApiError(422, "invalid_parameter", f"Unknown field: {name}")

    def listing(self, method: str, params: dict[str, Any], query: dict[str, Any],
                body: dict[str, Any]) -> Result:
        args = {**query, **(body if isinstance(body, dict) else {})}
        module = params["module"]
        max_num = min(int(args.get("max_num") or 20), MAX_NUM_CAP)
        offset = int(args.get("offset") or 0)
        fields = self._fields(args.get("fields"))
        deleted = str(args.get("deleted", "")).lower() in ("1", "true")
        order = str(args.get("order_by") or "date_modified:DESC")
        keyset_order = order.replace(" ", "").lower() in ("date_modified:asc,id:asc",
                                                          "date_modified:asc")
        wanted = offset + max_num + 1
        if module in PERSON_MODULES:
            table = self.store.module(module)
            rule = Filter(args.get("filter", []), self._person_value,
                          {"date_modified", "date_entered"})
            pinned = rule.candidates(self._pin(module))
            if pinned is not None:
                rows: Iterable[Person] = sorted(
                    (table[i] for i in pinned if i in table),
                    key=lambda p: (p.date_modified, p.id))
            elif keyset_order:
                rows = (table[key[1]] for key in
                        self.store.ordered_from(module, rule.lower_bound()))
            else:
                rows = self._sorted(list(table.values()), order)
            matched: list[Any] = []
            for person in rows:
                if (deleted or not person.deleted) and rule.test(person):
                    matched.append(person)
                    if len(matched) >= wanted:
                        break
            page = [self.person_json(p, fields) for p in matched[offset:offset + max_num]]
        elif module == "EmailAddresses":
            rule = Filter(args.get("filter", []), self._address_value,
                          {"date_modified", "date_created"})
            bound = rule.lower_bound()
            rows_a = [a for a in self.store.addresses.values()
                      if bound is None or a.date_modified >= bound]
            rows_a.sort(key=lambda a: (a.date_modified, a.id))
            matched = [a for a in rows_a if (deleted or not a.deleted) and rule.test(a)]
            page = [self.address_json(a, fields) for a in matched[offset:offset + max_num]]
        elif module == "ProspectLists":
            rule = Filter(args.get("filter", []), lambda row, name: self.list_json(row).get(
                name), {"date_modified"})
            matched = sorted((t for t in self.store.lists.values()
                              if (deleted or not t.deleted) and rule.test(t)),
                             key=lambda t: (t.name, t.id))
            page = [self.list_json(t) for t in matched[offset:offset + max_num]]
        else:
            return error(404, "not_found", f"Could not find module: {module}")
        more = len(matched) > offset + max_num
        return 200, {"next_offset": offset + max_num if more else -1, "records": page}

    def _pin(self, module: str) -> Callable[[str, list[str]], set[str] | None]:
        def resolve(name: str, values: list[str]) -> set[str] | None:
            if name == "id":
                return set(values)
            if name in ("email_addresses.email_address", "email", "email1"):
                found: set[str] = set()
                for value in values:
                    address_id = self.store.by_caps.get(value.upper())
                    if address_id:
                        found.update(p.id for p in self.store.holders_of(address_id)
                                     if p.module == module)
                return found
            return None
        return resolve

    @staticmethod
    def _sorted(rows: list[Person], order: str) -> list[Person]:
        for part in reversed([p for p in order.split(",") if p.strip()]):
            name, _, direction = part.strip().partition(":")
            def key(person: Person, field: str = name) -> str:
                return str(getattr(person, field, None) or person.fields.get(field) or "")
            rows.sort(key=key, reverse=direction.upper() == "DESC")
        return rows

    @staticmethod
    def _address_value(row: Address, name: str) -> Any:
        values = {"id": row.id, "email_address": row.email, "opt_out": row.opt_out,
                  "invalid_email": row.invalid, "date_modified": row.date_modified,
                  "date_created": row.date_created, "deleted": row.deleted}
        if name not in values:
            raise ApiError(422, "invalid_parameter", f"Unknown field: {name}")
        return values[name]

    def count(self, method: str, params: dict[str, Any], query: dict[str, Any],
              body: dict[str, Any]) -> Result:
        """``GET /<module>/count``: live records, ``{"record_count": n}`` (Sugar API help,
        module_count_get; a filter is not emulated)."""
        module = params["module"]
        if module not in PERSON_MODULES:
            return error(404, "not_found", f"Could not find module: {module}")
        live = sum(1 for person in self.store.module(module).values() if not person.deleted)
        return 200, {"record_count": live}

    def module(self, method: str, params: dict[str, Any], query: dict[str, Any],
               body: dict[str, Any]) -> Result:
        if method == "GET":
            return self.listing(method, params, query, {})
        module = params["module"]
        if module == "ProspectLists":
            row = TargetList(id=self.store.new_id(), name=str(body.get("name") or "List"),
                             list_type=str(body.get("list_type") or "default"),
                             date_modified=self.store.now())
            self.store.lists[row.id] = row
            return 200, self.list_json(row)
        if module not in PERSON_MODULES:
            return error(404, "not_found", f"Could not find module: {module}")
        person = self.store.create(module, self._values(body))
        self._emails(person, body)
        return 200, self.person_json(person, None)

    def _values(self, body: dict[str, Any]) -> dict[str, Any]:
        skip = {"id", "date_modified", "date_entered", "deleted", "email", "email1",
                "email_opt_out", "_module", "_acl"}
        return {k: v for k, v in body.items() if k not in skip}

    def _emails(self, person: Person, body: dict[str, Any]) -> None:
        if isinstance(body.get("email"), list):
            self.store.replace_addresses(person, body["email"])
        elif body.get("email1"):
            self.store.set_email1(person, str(body["email1"]))

    def record(self, method: str, params: dict[str, Any], query: dict[str, Any],
               body: dict[str, Any]) -> Result:
        module, record_id = params["module"], params["record"]
        if module == "EmailAddresses":
            row = self.store.addresses.get(record_id)
            if row is None:
                return error(404, "not_found", f"Could not find record: {record_id}")
            if method == "PUT" and "opt_out" in body:
                self.store.set_opt_out(row, bool(body["opt_out"]))
            return 200, self.address_json(row, None)
        if module not in PERSON_MODULES:
            return error(404, "not_found", f"Could not find module: {module}")
        person = self.store.module(module).get(record_id)
        if person is None or person.deleted:
            return error(404, "not_found",
                         f"Could not find record: {record_id} in module: {module}")
        if method == "GET":
            return 200, self.person_json(person, self._fields(query.get("fields")))
        if method == "DELETE":
            self.store.delete(person)
            return 200, {"id": person.id}
        if self.conflicts > 0:
            self.conflicts -= 1
            return error(409, "edit_conflict",
                         "Edit conflict: the record was modified by another user")
        # Validate the addresses before changing anything, as one save would.
        for entry in body.get("email") or []:
            self.store.address(str(entry.get("email_address") or ""), create=False)
        person.fields.update(self._values(body))
        self._emails(person, body)
        self.store.touch(person)
        return 200, self.person_json(person, None)

    def _list(self, record_id: str) -> TargetList:
        row = self.store.lists.get(record_id)
        if row is None or row.deleted:
            raise ApiError(404, "not_found", f"Could not find record: {record_id} in module: "
                                             "ProspectLists")
        return row

    @staticmethod
    def _link_module(link: str) -> str:
        for module in PERSON_MODULES:
            if module.lower() == link:
                return module
        raise ApiError(404, "not_found", f"Could not find a relationship named: {link}")

    def related(self, method: str, params: dict[str, Any], query: dict[str, Any],
                body: Any) -> Result:
        target = self._list(params["record"])
        module = self._link_module(params["link"])
        table = self.store.module(module)
        ids = sorted(target.live(module))
        max_num = min(int(query.get("max_num") or 20), MAX_NUM_CAP)
        offset = int(query.get("offset") or 0)
        fields = self._fields(query.get("fields"))
        page = [self.person_json(table[i], fields) for i in ids[offset:offset + max_num]
                if i in table]
        more = len(ids) > offset + max_num
        return 200, {"next_offset": offset + max_num if more else -1, "records": page}

    def link_many(self, method: str, params: dict[str, Any], query: dict[str, Any],
                  body: dict[str, Any]) -> Result:
        target = self._list(params["record"])
        module = self._link_module(str(body.get("link_name") or ""))
        table = self.store.module(module)
        related = []
        for item in body.get("ids") or []:
            record_id = str(item.get("id") if isinstance(item, dict) else item)
            person = table.get(record_id)
            if person is not None and not person.deleted:
                self.store.add_member(target, module, record_id)
                related.append(self.person_json(person, ["id"]))
        return 200, {"record": self.list_json(target), "related_records": related}

    def link_one(self, method: str, params: dict[str, Any], query: dict[str, Any],
                 body: Any) -> Result:
        target = self._list(params["record"])
        module = self._link_module(params["link"])
        person = self.store.module(module).get(params["related"])
        if person is None or person.deleted:
            return error(404, "not_found", f"Could not find record: {params['related']}")
        if method == "POST":
            self.store.add_member(target, module, person.id)
        else:
            self.store.remove_member(target, module, person.id)
        return 200, {"record": self.list_json(target),
                     "related_record": self.person_json(person, ["id"])}

    def bulk(self, method: str, params: dict[str, Any], query: dict[str, Any],
             body: dict[str, Any]) -> Result:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list):
            return error(422, "missing_parameter", "requests is required")
        answers = []
        for item in requests:
            status, contents = self._one(item)
            answers.append({"contents": contents, "headers": {}, "status": status,
                            "status_text": _STATUS_TEXT.get(status, "")})
        return 200, answers

    def _one(self, item: dict[str, Any]) -> Result:
        url = urlsplit(str(item.get("url") or ""))
        method = str(item.get("method") or "GET").upper()
        scope = {"type": "http", "path": "/rest" + url.path, "method": method}
        for route, handler in self._handlers:
            match, child = route.matches(scope)
            if match == Match.FULL and handler != self.bulk:
                data = item.get("data")
                raw = data.encode() if isinstance(data, str) else json.dumps(data or {}).encode()
                return self.dispatch(handler, method, dict(child["path_params"]),
                                     parse_qsl(url.query), raw, None, authenticated=True)
        return error(404, "no_method", f"Could not find a route for {method} {url.path}")
