"""The legacy REST v4_1 API (``/service/v4_1/rest.php``) over the shared store.

Reproduces what a real SuiteCRM 7.12.14 on PHP 8.2 did (see the captures): form fields
``method``/``input_type``/``response_type``/``rest_data``; ``rest_data`` as a positional
JSON list, or as an object whose keys must be exactly the PHP parameter names (else
HTTP 500 with an empty body, like PHP 8's "Unknown named parameter"; too few arguments
likewise); errors as HTTP 200 ``{"name","number","description"}``; ``name_value_list``
objects in answers and ``[{"name","value"}]`` lists in requests; ``next_offset`` that
always advances; ``deleted=1`` returning deleted and live rows; ``email_opt_out``
ignored on updates (honoured on create) while ``set_entry`` on EmailAddresses flips the
address without touching the records; a bad SQL ``query`` answered with HTTP 500 and
an empty body.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .sql import (
    Node,
    SqlError,
    evaluate,
    id_candidates,
    lower_bound,
    parse_where,
    pins,
    process_order_by,
    validate_clauses,
)
from .store import PERSON_MODULES, Address, Person, SugarStore, TableError, TargetList, stamp

if TYPE_CHECKING:
    from . import SugarEmulator

__all__ = ["LegacyApi"]

# name -> (parameters in order, how many are required), from SugarWebServiceImplv4_1.
SIGNATURES: dict[str, tuple[tuple[str, ...], int]] = {
    "login": (("user_auth", "application", "name_value_list"), 1),
    "logout": (("session",), 1),
    "get_user_id": (("session",), 1),
    "get_server_info": ((), 0),
    "get_entry_list": (("session", "module_name", "query", "order_by", "offset",
                        "select_fields", "link_name_to_fields_array", "max_results", "deleted",
                        "favorites"), 9),
    "get_entry": (("session", "module_name", "id", "select_fields",
                   "link_name_to_fields_array", "track_view"), 5),
    "get_entries": (("session", "module_name", "ids", "select_fields",
                     "link_name_to_fields_array", "track_view"), 5),
    "get_entries_count": (("session", "module_name", "query", "deleted"), 4),
    "set_entry": (("session", "module_name", "name_value_list", "track_view"), 3),
    "set_entries": (("session", "module_name", "name_value_lists"), 3),
    "set_relationship": (("session", "module_name", "module_id", "link_field_name",
                          "related_ids", "name_value_list", "delete"), 7),
    "get_relationships": (("session", "module_name", "module_id", "link_field_name",
                           "related_module_query", "related_fields",
                           "related_module_link_name_to_fields_array", "deleted", "order_by",
                           "offset", "limit"), 8),
}

_TABLES = {"Contacts": "contacts", "Leads": "leads", "Prospects": "prospects",
           "EmailAddresses": "email_addresses", "ProspectLists": "prospect_lists"}


class PhpFatal(Exception):
    """What PHP would die of: the answer is HTTP 500 with an empty body."""


def soap_error(name: str, number: int | str, description: str) -> dict[str, Any]:
    return {"name": name, "number": number, "description": description}


INVALID_SESSION = soap_error("Invalid Session ID", 11, "The session ID is invalid")
NO_MODULE = soap_error("Module Does Not Exist", 20, "This module is not available on this server")
# SoapHelperWebServices::checkQuery: SugarSQLValidate refused the query or order_by.
ACCESS_DENIED = soap_error("Access Denied", 40, "You do not have access")


def _bit(value: Any) -> str:
    return "1" if value in (True, 1, "1", "true", "on") else "0"


def _nvl(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {key: {"name": key, "value": value} for key, value in values.items()}


def _pairs(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: (v.get("value") if isinstance(v, dict) else v) for k, v in value.items()}
    return {str(item.get("name")): item.get("value") for item in value or []
            if isinstance(item, dict)}


class LegacyApi:
    """POST /service/v4_1/rest.php; handlers run under the emulator's lock."""

    def __init__(self, emulator: SugarEmulator) -> None:
        self.emulator = emulator
        self.sessions: dict[str, str] = {}
        self.logins = 0

    @property
    def store(self) -> SugarStore:
        return self.emulator.store

    def routes(self) -> list[Route]:
        return [Route("/service/v4_1/rest.php", self.endpoint, methods=["POST"]),
                Route("/legacy/service/v4_1/rest.php", self.endpoint, methods=["POST"])]

    async def endpoint(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode(errors="replace"),
                              keep_blank_values=True))
        with self.emulator.lock:
            try:
                answer = self.call(form.get("method", ""), form.get("rest_data", ""))
            except (PhpFatal, SqlError):
                return Response(b"", status_code=500, media_type="text/html; charset=UTF-8")
        return JSONResponse(answer)

    def call(self, method: str, raw: str) -> Any:
        try:
            data = json.loads(raw) if raw else []
        except ValueError:
            raise PhpFatal("rest_data is not JSON") from None
        if method not in SIGNATURES:
            return soap_error("An Undefined Error - invalid_call occurred", "-1",
                              "There is no error definition for invalid_call")
        names, required = SIGNATURES[method]
        if isinstance(data, list):
            args = dict(zip(names, data, strict=False))
        elif isinstance(data, dict):
            # PHP 8 spreads the object as named arguments: an unknown name is fatal.
            if set(data) - set(names):
                raise PhpFatal(f"Unknown named parameter ${sorted(set(data) - set(names))[0]}")
            args = dict(data)
        else:
            raise PhpFatal("rest_data must be a list or an object")
        if any(name not in args for name in names[:required]):
            raise PhpFatal(f"Too few arguments to function {method}()")
        handler: Callable[[dict[str, Any]], Any] = getattr(self, f"do_{method}")
        if "session" in names and str(args.get("session")) not in self.sessions:
            return INVALID_SESSION
        if "module_name" in args and args["module_name"] not in _TABLES:
            return NO_MODULE
        return handler(args)

    # -- sessions ----------------------------------------------------------------------
    def do_login(self, args: dict[str, Any]) -> Any:
        auth = args.get("user_auth") or {}
        user = str(auth.get("user_name") or "")
        password = self.emulator.users.get(user)
        given = str(auth.get("password") or "")
        if str(auth.get("encryption", "")).upper() == "PLAIN":
            given = hashlib.md5(given.encode(), usedforsecurity=False).hexdigest()
        if password is None or given != hashlib.md5(password.encode(),
                                                    usedforsecurity=False).hexdigest():
            return soap_error("Invalid Login", 10,
                              "Login attempt failed please check the username and password")
        session = secrets.token_hex(16)
        self.sessions[session] = user
        self.logins += 1
        return {"id": session, "module_name": "Users", "name_value_list": _nvl({
            "user_id": "1", "user_name": user, "user_language": "en_us",
            "user_is_admin": True, "user_default_dateformat": "m/d/Y",
            "user_default_timeformat": "H:i"})}

    def do_logout(self, args: dict[str, Any]) -> Any:
        self.sessions.pop(str(args["session"]), None)
        return None

    def do_get_user_id(self, args: dict[str, Any]) -> Any:
        return "1"

    def do_get_server_info(self, args: dict[str, Any]) -> Any:
        return {"flavor": "CE", "version": "6.5.25", "suitecrm_version": "7.12.14",
                "gmt_time": stamp(self.store.now())}

    # -- rows --------------------------------------------------------------------------
    def _person_row(self, person: Person) -> dict[str, Any]:
        primary = self.store.primary(person)
        table = _TABLES[person.module]
        row: dict[str, Any] = {
            "id": person.id, "date_modified": stamp(person.date_modified),
            "date_entered": stamp(person.date_entered), "deleted": _bit(person.deleted),
            "email1": primary.email if primary else "",
            "email_opt_out": _bit(primary.opt_out) if primary else "",
        }
        for key, value in person.fields.items():
            row[key] = ("^" + "^,^".join(value) + "^") if isinstance(value, list) and value \
                else ("" if isinstance(value, list) else value)
        for key in self.emulator.known_fields:
            row.setdefault(key, None)
        row.update({f"{table}.{key}": value for key, value in list(row.items())})
        return row

    @staticmethod
    def _address_row(row: Address) -> dict[str, Any]:
        values = {"id": row.id, "email_address": row.email, "email_address_caps": row.caps,
                  "opt_out": _bit(row.opt_out), "invalid_email": _bit(row.invalid),
                  "date_created": stamp(row.date_created),
                  "date_modified": stamp(row.date_modified), "deleted": _bit(row.deleted)}
        values.update({f"email_addresses.{k}": v for k, v in list(values.items())})
        return values

    def _list_row(self, row: TargetList) -> dict[str, Any]:
        values = {"id": row.id, "name": row.name, "list_type": row.list_type,
                  "date_modified": stamp(row.date_modified), "deleted": _bit(row.deleted),
                  "entry_count": str(sum(len(row.live(m)) for m in PERSON_MODULES))}
        values.update({f"prospect_lists.{k}": v for k, v in list(values.items())})
        return values

    def _tables(self) -> dict[str, Callable[[Mapping[str, set[str]]], Iterable[dict[str, Any]]]]:
        store = self.store

        def link_rows(person: Person) -> Iterable[dict[str, Any]]:
            for link in person.links:
                yield {"id": link.id, "email_address_id": link.address_id,
                       "bean_id": person.id, "bean_module": person.module,
                       "primary_address": _bit(link.primary),
                       "reply_to_address": _bit(link.reply_to), "deleted": _bit(link.deleted)}

        def bean_rel(pins: Mapping[str, set[str]]) -> Iterable[dict[str, Any]]:
            if "bean_id" in pins:
                for table in store.people.values():
                    for bean_id in pins["bean_id"]:
                        if bean_id in table:
                            yield from link_rows(table[bean_id])
                return
            if "email_address_id" in pins and pins.get("deleted") == {"0"}:
                seen: set[tuple[str, str]] = set()
                for address_id in pins["email_address_id"]:
                    for person in store.holders_of(address_id):
                        if (person.module, person.id) not in seen:
                            seen.add((person.module, person.id))
                            yield from link_rows(person)
                return
            for table in store.people.values():
                for person in table.values():
                    yield from link_rows(person)

        def addresses(pins: Mapping[str, set[str]]) -> Iterable[dict[str, Any]]:
            if "email_address_caps" in pins:
                ids = {store.by_caps[c] for c in pins["email_address_caps"] if c in store.by_caps}
            elif "id" in pins:
                ids = {i for i in pins["id"] if i in store.addresses}
            else:
                ids = set(store.addresses)
            for address_id in ids:
                row = self._address_row(store.addresses[address_id])
                yield {k: v for k, v in row.items() if "." not in k}

        def members(pins: Mapping[str, set[str]]) -> Iterable[dict[str, Any]]:
            for target in store.lists.values():
                for module, rows in target.members.items():
                    for related_id, row in rows.items():
                        yield {"id": row.id, "prospect_list_id": target.id,
                               "related_id": related_id, "related_type": module,
                               "date_modified": stamp(row.date_modified),
                               "deleted": _bit(row.deleted)}

        # prospect_lists_prospects exists, but SugarSQLValidate refuses a subquery on it
        # (Access Denied, seen on SuiteCRM 7.12.14): see validate_clauses.
        return {"email_addr_bean_rel": bean_rel, "email_addresses": addresses,
                "prospect_lists_prospects": members}

    def _fields(self, module: str) -> set[str]:
        """The module's field names (its vardefs, as process_order_by knows them)."""
        if module in PERSON_MODULES:
            return {"id", "date_modified", "date_entered", "deleted", "email1",
                    "email_opt_out", *self.emulator.known_fields}
        if module == "EmailAddresses":
            return {"id", "email_address", "email_address_caps", "opt_out", "invalid_email",
                    "date_created", "date_modified", "deleted"}
        return {"id", "name", "list_type", "date_modified", "deleted", "entry_count"}

    def _rows(self, module: str, query: Node | None, cache: dict[int, set[str]],
              order_by: str) -> Iterable[tuple[Any, dict[str, Any]]]:
        table = _TABLES[module]
        tables = self._tables()
        order = process_order_by(order_by, self._fields(module))
        if module in PERSON_MODULES:
            people = self.store.module(module)
            pinned = id_candidates(query, f"{table}.id", tables, cache)
            if pinned is None:
                pinned = id_candidates(query, "id", tables, cache)
            if pinned is not None:
                chosen = [people[i] for i in pinned if i in people]
            elif order in ([("date_modified", False), ("id", False)],
                           [("date_modified", False)]):
                # the (date_modified, id) index, for keyset scans of large stores
                bound = lower_bound(query, f"{table}.date_modified")
                start = None
                if bound:
                    start = datetime.fromisoformat(bound.replace(" ", "T") + "+00:00")
                return ((people[key[1]], self._person_row(people[key[1]]))
                        for key in self.store.ordered_from(module, start))
            else:
                chosen = list(people.values())
            rows: list[tuple[Any, dict[str, Any]]] = [(p, self._person_row(p)) for p in chosen]
        elif module == "EmailAddresses":
            pinned_caps = pins(query, "email_addresses").get("email_address_caps")
            chosen_a = [self.store.addresses[self.store.by_caps[c]] for c in pinned_caps
                        if c in self.store.by_caps] if pinned_caps is not None \
                else list(self.store.addresses.values())
            rows = [(a, self._address_row(a)) for a in chosen_a]
        elif module == "ProspectLists":
            rows = [(t, self._list_row(t)) for t in self.store.lists.values()]
        else:
            rows = []
        return self._order(rows, order)

    @staticmethod
    def _order(rows: list[tuple[Any, dict[str, Any]]], order: list[tuple[str, bool]]
               ) -> list[tuple[Any, dict[str, Any]]]:
        # No ORDER BY left: MySQL (InnoDB) returns the rows in primary-key order, as a
        # real SuiteCRM 7.12.14 did for an order_by of prefixed terms.
        rows.sort(key=lambda pair: str(pair[1].get("id") or ""))
        for column, descending in reversed(order):
            def key(pair: tuple[Any, dict[str, Any]], field: str = column) -> str:
                return str(pair[1].get(field) or "")
            rows.sort(key=key, reverse=descending)
        return rows

    def _select(self, row: dict[str, Any], select: list[str]) -> dict[str, Any]:
        if not select:
            return {k: v for k, v in row.items() if "." not in k}
        return {name: row.get(name) for name in select}

    def _email_links(self, person: Person, fields: list[str]) -> dict[str, Any]:
        records = []
        for _, row in self.store.addresses_of(person):
            values = {"id": row.id, "email_address": row.email, "opt_out": _bit(row.opt_out),
                      "invalid_email": _bit(row.invalid),
                      # SuiteCRM 7.12 leaves the relationship's flags blank in link rows.
                      "primary_address": "", "reply_to_address": ""}
            records.append({"link_value": _nvl({f: values.get(f) for f in fields})})
        return {"name": "email_addresses", "records": records}

    def _entries(self, module: str, picked: list[tuple[Any, dict[str, Any]]],
                 select: list[str], links: list[dict[str, Any]]) -> dict[str, Any]:
        entry_list, relationships = [], []
        for obj, row in picked:
            entry_list.append({"id": row["id"], "module_name": module,
                               "name_value_list": _nvl(self._select(row, select))})
            link_list = [self._email_links(obj, list(link.get("value") or []))
                         for link in links if link.get("name") == "email_addresses"
                         and isinstance(obj, Person)]
            if link_list:
                relationships.append({"link_list": link_list})
        return {"entry_list": entry_list, "relationship_list": relationships}

    # -- reading -----------------------------------------------------------------------
    def _refused(self, args: dict[str, Any], query_arg: str) -> bool:
        """checkQuery: would SugarSQLValidate refuse this call's query and order_by?"""
        return not validate_clauses(str(args.get(query_arg) or ""),
                                    str(args.get("order_by") or ""), self._tables())

    def do_get_entries_count(self, args: dict[str, Any]) -> Any:
        module = str(args["module_name"])
        if self._refused(args, "query"):
            return ACCESS_DENIED
        query = parse_where(str(args.get("query") or ""), self._tables())
        deleted = str(args.get("deleted")) in ("1", "True", "true")
        cache: dict[int, set[str]] = {}
        tables = self._tables()
        total = sum(1 for _, row in self._rows(module, query, cache, "")
                    if (deleted or row.get("deleted") != "1")
                    and evaluate(query, row, tables, cache))
        return {"result_count": str(total)}  # a string, as SuiteCRM answers

    def do_get_entry_list(self, args: dict[str, Any]) -> Any:
        module = str(args["module_name"])
        if self._refused(args, "query"):
            return ACCESS_DENIED
        query = parse_where(str(args.get("query") or ""), self._tables())
        offset = int(args.get("offset") or 0)
        max_results = int(args.get("max_results") or 0) or 20
        deleted = str(args.get("deleted")) in ("1", "True", "true")
        cache: dict[int, set[str]] = {}
        tables = self._tables()
        picked = []
        total = 0
        for obj, row in self._rows(module, query, cache, str(args.get("order_by") or "")):
            if not deleted and row.get("deleted") == "1":
                continue
            if not evaluate(query, row, tables, cache):
                continue
            total += 1
            if offset < total <= offset + max_results:
                picked.append((obj, row))
            elif total > offset + max_results:
                break
        answer = self._entries(module, picked, list(args.get("select_fields") or []),
                               list(args.get("link_name_to_fields_array") or []))
        # next_offset always advances, even past the last row (seen on SuiteCRM).
        return {"result_count": len(picked), "total_count": str(total),
                "next_offset": offset + len(picked), **answer}

    def _get(self, module: str, record_id: str) -> tuple[Any, dict[str, Any]] | None:
        if module in PERSON_MODULES:
            person = self.store.module(module).get(record_id)
            return (person, self._person_row(person)) if person and not person.deleted \
                else None
        if module == "EmailAddresses":
            row = self.store.addresses.get(record_id)
            return (row, self._address_row(row)) if row else None
        target = self.store.lists.get(record_id)
        return (target, self._list_row(target)) if target else None

    def do_get_entries(self, args: dict[str, Any]) -> Any:
        module = str(args["module_name"])
        picked, missing = [], []
        for record_id in args.get("ids") or []:
            found = self._get(module, str(record_id))
            if found is None:
                missing.append(str(record_id))
            else:
                picked.append(found)
        answer = self._entries(module, picked, list(args.get("select_fields") or []),
                               list(args.get("link_name_to_fields_array") or []))
        for record_id in missing:
            answer["entry_list"].append({"id": record_id, "module_name": module,
                                         "name_value_list": [
                                             {"name": "warning", "value": "Access to this "
                                              "object is denied since it has been deleted or "
                                              "does not exist"},
                                             {"name": "deleted", "value": "1"}]})
        return answer

    def do_get_entry(self, args: dict[str, Any]) -> Any:
        return self.do_get_entries({**args, "ids": [args["id"]]})

    def do_get_relationships(self, args: dict[str, Any]) -> Any:
        module, link = str(args["module_name"]), str(args["link_field_name"])
        if self._refused(args, "related_module_query"):
            return ACCESS_DENIED
        record_id = str(args["module_id"])
        if module == "ProspectLists":
            target = self.store.lists.get(record_id)
            related = next((m for m in PERSON_MODULES if m.lower() == link), None)
            if target is None or related is None:
                return {"entry_list": [], "relationship_list": []}
            table = self.store.module(related)
            picked = [(table[i], self._person_row(table[i])) for i in sorted(target.live(related))
                      if i in table]
            return self._entries(related, picked, list(args.get("related_fields") or []), [])
        if module in PERSON_MODULES and link == "prospect_lists":
            lists: list[tuple[Any, dict[str, Any]]] = [
                (self.store.lists[i], self._list_row(self.store.lists[i]))
                for i in self.store.memberships(module, record_id)]
            return self._entries("ProspectLists", lists,
                                 list(args.get("related_fields") or []), [])
        return {"entry_list": [], "relationship_list": []}

    # -- writing -----------------------------------------------------------------------
    def _save(self, module: str, values: dict[str, Any]) -> str:
        record_id = str(values.get("id") or "")
        if module == "EmailAddresses":
            row = self.store.addresses.get(record_id) \
                or self.store.address(str(values.get("email_address") or ""))
            if row is None:
                raise TableError("no such EmailAddresses row")
            if "opt_out" in values:
                self.store.set_opt_out(row, _bit(values["opt_out"]) == "1")
            if "invalid_email" in values:
                row.invalid = _bit(values["invalid_email"]) == "1"
            return str(row.id)
        if module == "ProspectLists":
            target = self.store.lists.get(record_id)
            if target is None:
                target = TargetList(id=record_id or self.store.new_id(),
                                    name=str(values.get("name") or "List"),
                                    date_modified=self.store.now())
                self.store.lists[target.id] = target
            target.name = str(values.get("name") or target.name)
            target.list_type = str(values.get("list_type") or target.list_type)
            return target.id
        table = self.store.module(module)
        person = table.get(record_id) if record_id else None
        plain = {k: v for k, v in values.items()
                 if k not in ("id", "email1", "email_opt_out", "deleted", "date_modified")}
        for key, value in list(plain.items()):
            if isinstance(value, str) and value.startswith("^") and value.endswith("^"):
                plain[key] = [part.strip("^") for part in value.split(",")]
        if person is None:
            person = self.store.create(module, plain, record_id=record_id or None)
            if values.get("email1"):
                self.store.set_email1(person, str(values["email1"]))
                primary = self.store.primary(person)
                if primary is not None and "email_opt_out" in values:
                    # Honoured on create only (seen on SuiteCRM 7.12).
                    self.store.set_opt_out(primary, _bit(values["email_opt_out"]) == "1")
            return person.id
        if _bit(values.get("deleted")) == "1":
            self.store.delete(person)
            return person.id
        person.fields.update(plain)
        if values.get("email1"):
            primary = self.store.primary(person)
            if primary is None or primary.email.lower() != str(values["email1"]).lower():
                self.store.set_email1(person, str(values["email1"]))
        # email_opt_out on an update is ignored, but the record is saved all the same.
        self.store.touch(person)
        return person.id

    def do_set_entry(self, args: dict[str, Any]) -> Any:
        values = _pairs(args.get("name_value_list"))
        try:
            record_id = self._save(str(args["module_name"]), values)
        except TableError as exc:
            raise PhpFatal(str(exc)) from None
        return {"id": record_id, "entry_list": _nvl(values)}

    def do_set_entries(self, args: dict[str, Any]) -> Any:
        ids = []
        for item in args.get("name_value_lists") or []:
            try:
                ids.append(self._save(str(args["module_name"]), _pairs(item)))
            except TableError as exc:
                raise PhpFatal(str(exc)) from None
        return {"ids": ids}

    def do_set_relationship(self, args: dict[str, Any]) -> Any:
        module, link = str(args["module_name"]), str(args["link_field_name"])
        delete = str(args.get("delete")) in ("1", "True", "true")
        created = failed = deleted = 0
        related_ids = [str(i) for i in args.get("related_ids") or []]
        target = self.store.lists.get(str(args["module_id"])) if module == "ProspectLists" \
            else None
        related = next((m for m in PERSON_MODULES if m.lower() == link), None)
        if target is None or related is None:
            return {"created": 0, "failed": len(related_ids), "deleted": 0}
        table = self.store.module(related)
        for related_id in related_ids:
            if related_id not in table or table[related_id].deleted:
                failed += 1
            elif delete:
                self.store.remove_member(target, related, related_id)
                deleted = 1
            else:
                self.store.add_member(target, related, related_id)
                created = 1
        # SuiteCRM reports 1/0 per call rather than a count (see the captures).
        return {"created": created, "failed": failed, "deleted": deleted}
