"""The ``v4_1`` flavour: the legacy REST API of SugarCRM CE and SuiteCRM 7/8.

Quirks kept here (seen on a real SuiteCRM 7.12.14 on PHP 8.2): every call is a form
POST whose ``rest_data`` PHP spreads into the method's arguments, so argument names
must be exactly the PHP parameter names (PHP 8 answers an unknown one such as
``application_name`` with HTTP 500 and an empty body) - we name arguments in code and
send them as a positional JSON list, which every PHP version accepts. Errors come back
as HTTP 200 ``{"name","number","description"}``; "Invalid Session ID" (11) means log
in again. ``next_offset`` always advances, even past the last row. ``email_opt_out`` is
ignored on a contact update: the opt-out is set on the ``EmailAddresses`` record, whose
change does not touch the contact's ``date_modified``. A bad SQL ``query`` is a 500
with an empty body. ``query`` and ``order_by`` pass SugarSQLValidate first: a subquery
on any table but ``email_addr_bean_rel`` / ``email_addresses`` / ``emails*`` /
``teams*`` (``prospect_lists_prospects``, say), or a nested one, is "Access Denied"
(40). ``SugarBean::process_order_by`` keeps only bare field names: a prefixed term
(``contacts.date_modified``) is dropped without a word and the rows come in id order,
so ``order_by`` here is always bare (``date_modified ASC, id ASC``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from crmsync.connect import ErrorMap, ErrorRule, Token, TokenAuth, copy_request, idempotent
from crmsync.errors import AuthError, RemoteError
from crmsync.model import WriteResult

from .flavour import SugarFlavour
from .records import (
    AddressChange,
    RecordWrite,
    SugarEmailAddress,
    SugarRecord,
    field_text,
    parse_sugar_datetime,
)
from .settings import SugarSettings

__all__ = ["SIGNATURES", "LegacyError", "LegacyFlavour", "rest_data", "sql_text"]

# The PHP parameter names of each method, in order (SugarWebServiceImplv4_1).
SIGNATURES: dict[str, tuple[str, ...]] = {
    "login": ("user_auth", "application", "name_value_list"),
    "logout": ("session",),
    "get_user_id": ("session",),
    "get_server_info": (),
    "get_entry_list": ("session", "module_name", "query", "order_by", "offset",
                       "select_fields", "link_name_to_fields_array", "max_results",
                       "deleted", "favorites"),
    "get_entries_count": ("session", "module_name", "query", "deleted"),
    "set_entries": ("session", "module_name", "name_value_lists"),
    "set_relationship": ("session", "module_name", "module_id", "link_field_name",
                         "related_ids", "name_value_list", "delete"),
    "get_relationships": ("session", "module_name", "module_id", "link_field_name",
                          "related_module_query", "related_fields",
                          "related_module_link_name_to_fields_array", "deleted",
                          "order_by", "offset", "limit"),
}

_ADDRESS_FIELDS = ["id", "email_address", "opt_out", "invalid_email", "primary_address",
                   "reply_to_address"]


class LegacyError(RemoteError):
    """A v4_1 error body (HTTP 200): ``number`` is the SOAP error number."""

    def __init__(self, message: str, *, number: int) -> None:
        super().__init__(message, status=200, code=str(number), retryable=False)
        self.number = number


def _error_number(data: Any) -> int | None:
    """The SOAP error number of a v4_1 error body (HTTP 200), else ``None``."""
    if isinstance(data, dict) and {"name", "number", "description"} <= set(data) \
            and "id" not in data:
        try:
            return int(data["number"])
        except (TypeError, ValueError):
            return -1
    return None


#: HTTP errors of v4_1 (its own errors come as HTTP 200 bodies, see LegacyError).
LEGACY_ERRORS = ErrorMap("v4_1", code_when_missing="http_{status}",
                         retryable_statuses=(429, 502, 503, 504), rules=[
    ErrorRule(RemoteError, status=range(400, 600), advice=(
        "SuiteCRM answers a bad SQL query or an argument name PHP 8 does not know this "
        "way: check the fields and modules settings and the server's PHP error log"))])


class LegacySession(TokenAuth):
    """The v4_1 session id: the first argument of every call's ``rest_data``; a call
    answered "Invalid Session ID" (number 11) logs in again once and is sent again."""

    requires_response_body = True

    def __init__(self, login: Callable[[], str]) -> None:
        super().__init__()
        self._login = login

    def obtain(self) -> Token:
        return Token(value=self._login())

    def attach(self, request: httpx.Request, token: Token) -> httpx.Request:
        form = parse_qsl(request.content.decode(), keep_blank_values=True)
        out = []
        for key, value in form:
            if key == "rest_data":
                arguments = json.loads(value)
                arguments[0] = token.value
                value = json.dumps(arguments)
            out.append((key, value))
        return copy_request(request, content=urlencode(out).encode())

    def is_refused(self, response: httpx.Response) -> bool:
        try:
            return _error_number(response.json()) == 11
        except ValueError:
            return False


def rest_data(method: str, **arguments: Any) -> str:
    """``rest_data`` for ``method``: named in code, positional on the wire.

    Raises ``TypeError`` for a name that is not a parameter of the PHP method (PHP 8
    would answer HTTP 500) or a missing one (PHP answers "Too few arguments").
    """
    names = SIGNATURES[method]
    unknown = sorted(set(arguments) - set(names))
    missing = [name for name in names if name not in arguments]
    if unknown or missing:
        raise TypeError(f"v4_1 {method}: unknown argument(s) {unknown}, missing {missing}; "
                        f"the PHP signature is {method}({', '.join(names)})")
    return json.dumps([arguments[name] for name in names])


def sql_text(value: str) -> str:
    """A quoted SQL string literal for a v4_1 ``query`` (MySQL escaping)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "on", "yes")


def _values(name_value_list: Any) -> dict[str, Any]:
    if isinstance(name_value_list, dict):
        return {key: (item.get("value") if isinstance(item, dict) else item)
                for key, item in name_value_list.items()}
    if isinstance(name_value_list, list):
        return {str(item.get("name")): item.get("value") for item in name_value_list
                if isinstance(item, dict)}
    return {}


def _pairs(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": key, "value": value} for key, value in values.items()]


_WRITES = frozenset({"set_entry", "set_entries", "set_relationship", "set_relationships"})


class LegacyFlavour(SugarFlavour):
    """SugarCRM CE / SuiteCRM legacy REST v4_1."""

    def __init__(self, settings: SugarSettings, http: httpx.Client) -> None:
        super().__init__(settings, http)
        self.url = f"{settings.base_url}/service/v4_1/rest.php"
        self.auth = LegacySession(self._login)

    # -- transport ---------------------------------------------------------------------
    def _post(self, method: str, arguments: dict[str, Any], *, auth: bool = False) -> Any:
        form = {"method": method, "input_type": "JSON", "response_type": "JSON",
                "rest_data": rest_data(method, **arguments)}
        response = LEGACY_ERRORS.call(
            self.http, "POST", self.url, what=method, write=method in _WRITES, data=form,
            auth=self.auth if auth else None,
            extensions=None if method in _WRITES else idempotent())
        try:
            data = response.json()
        except ValueError:
            raise RemoteError(f"v4_1 {method}: the answer is not JSON ({response.text[:120]!r});"
                              f" is {self.url} a SuiteCRM/SugarCRM v4_1 endpoint?",
                              status=response.status_code, code="not_json") from None
        if _error_number(data) is not None:
            number = int(data["number"])
            message = f"v4_1 {method}: {data['name']} ({number}): {data['description']}"
            if number == 40:
                message += self._denied_hint(method, arguments)
            raise LegacyError(message, number=number)
        return data

    def _denied_hint(self, method: str, arguments: dict[str, Any]) -> str:
        module = arguments.get("module_name") or "?"
        user = self.settings.username
        return (f" on {module}. Either SuiteCRM's SQL validator (SugarSQLValidate) refused "
                f"the query or order_by crmsync sent, or user {user!r} may not read "
                f"{module}. If {user!r} can list {module} in SuiteCRM, it is the query: "
                "report it as a crmsync bug, with this message and the 'checkQuery - bad "
                "query' line of suitecrm.log; otherwise give the user read access to "
                f"{module} (Admin > Role Management) and run again")

    def _login(self) -> str:
        # md5 of the password: the server compares hashes (no "encryption": "PLAIN").
        digest = hashlib.md5(self.settings.password.get_secret_value().encode(),
                             usedforsecurity=False).hexdigest()
        try:
            data = self._post("login", {
                "user_auth": {"user_name": self.settings.username, "password": digest},
                "application": self.settings.application, "name_value_list": []})
        except LegacyError as exc:
            raise AuthError(f"{exc} - check the username and CRMSYNC_SUGARCRM_PASSWORD") \
                from None
        if not isinstance(data, dict) or not data.get("id"):
            raise AuthError("v4_1 login returned no session id; check base_url")
        return str(data["id"])

    @property
    def logins(self) -> int:
        return self.auth.obtained

    def session(self) -> str:
        return self.auth.token().value

    def call(self, method: str, **arguments: Any) -> Any:
        """Call ``method`` with the session (:class:`LegacySession` puts it in and logs
        in again once when the server lost it)."""
        return self._post(method, {"session": "", **arguments}, auth=True)

    def close(self) -> None:
        session = self.auth.forget()
        if session is not None:
            # A failed logout is harmless: the session expires on its own.
            with contextlib.suppress(RemoteError, httpx.HTTPError):
                self._post("logout", {"session": session.value})

    # -- reading -----------------------------------------------------------------------
    def check(self) -> str:
        user = self.call("get_user_id")
        return f"v4_1 at {self.settings.base_url}, user id {user}"

    def _entry_list(self, module: str, query: str, order_by: str, offset: int,
                    select: list[str], links: list[dict[str, Any]], deleted: int,
                    max_results: int | None = None) -> dict[str, Any]:
        data = self.call("get_entry_list", module_name=module, query=query, order_by=order_by,
                         offset=offset, select_fields=select,
                         link_name_to_fields_array=links,
                         max_results=max_results or self.settings.page_size,
                         deleted=deleted, favorites=False)
        return data if isinstance(data, dict) else {}

    def target_lists(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        offset = 0
        while True:
            data = self._entry_list("ProspectLists", "", "name ASC", offset,
                                    ["id", "name"], [], 0)
            entries = data.get("entry_list") or []
            for entry in entries:
                values = _values(entry.get("name_value_list"))
                found.append((str(entry["id"]), str(values.get("name") or entry["id"])))
            # next_offset always advances in v4_1: a short page is the last one.
            if len(entries) < self.settings.page_size:
                return found
            offset += len(entries)

    def list_members(self, list_id: str, module: str) -> set[str]:
        data = self.call("get_relationships", module_name="ProspectLists", module_id=list_id,
                         link_field_name=module.lower(), related_module_query="",
                         related_fields=["id"], related_module_link_name_to_fields_array=[],
                         deleted=0, order_by="", offset=0, limit=False)
        return {str(entry["id"]) for entry in (data or {}).get("entry_list") or []}

    def _select(self) -> list[str]:
        return list(dict.fromkeys(["id", "date_modified", "deleted", *self.settings.fields,
                                   "email1", "email_opt_out"]))

    def _records(self, module: str, data: dict[str, Any]) -> list[SugarRecord]:
        entries = data.get("entry_list") or []
        relationships = data.get("relationship_list") or []
        records = []
        for position, entry in enumerate(entries):
            values = _values(entry.get("name_value_list"))
            addresses = []
            if position < len(relationships):
                for link in relationships[position].get("link_list") or []:
                    if link.get("name") != "email_addresses":
                        continue
                    for row in link.get("records") or []:
                        item = _values(row.get("link_value"))
                        addresses.append(SugarEmailAddress(
                            email=str(item.get("email_address") or ""),
                            opt_out=_flag(item.get("opt_out")),
                            primary=_flag(item.get("primary_address")),
                            invalid=_flag(item.get("invalid_email")),
                            reply_to=_flag(item.get("reply_to_address")),
                            id=str(item.get("id") or "")))
            email1 = str(values.get("email1") or "")
            if addresses and email1 and not any(item.primary for item in addresses):
                # SuiteCRM leaves primary_address blank in link rows; email1 is the primary.
                addresses = [SugarEmailAddress(email=a.email, opt_out=a.opt_out,
                                               primary=a.email.lower() == email1.lower(),
                                               invalid=a.invalid, reply_to=a.reply_to, id=a.id)
                             for a in addresses]
            if not addresses and email1:
                addresses = [SugarEmailAddress(email=email1, primary=True,
                                               opt_out=_flag(values.get("email_opt_out")))]
            records.append(SugarRecord(
                module=module, id=str(entry.get("id") or values.get("id")),
                date_modified=parse_sugar_datetime(str(values["date_modified"])),
                deleted=_flag(values.get("deleted")),
                fields={name: field_text(values.get(name)) for name in self.settings.fields},
                addresses=addresses))
        return records

    def _deleted_addresses(self, record: SugarRecord) -> None:
        # A deleted record comes back without its address (its email link is deleted
        # too); the link row still names it, so the deletion can carry the address.
        query = (f"email_addresses.id IN (SELECT eabr.email_address_id FROM "
                 f"email_addr_bean_rel eabr WHERE eabr.bean_id = {sql_text(record.id)} "
                 f"AND eabr.bean_module = {sql_text(record.module)})")
        data = self._entry_list("EmailAddresses", query, "", 0,
                                ["id", "email_address", "opt_out"], [], 0, max_results=5)
        for entry in data.get("entry_list") or []:
            values = _values(entry.get("name_value_list"))
            if values.get("email_address"):
                record.addresses.append(SugarEmailAddress(
                    email=str(values["email_address"]), opt_out=_flag(values.get("opt_out")),
                    primary=not record.addresses, id=str(entry.get("id") or "")))

    @staticmethod
    def _keyset(table: str, after: tuple[datetime, str] | None, since: datetime | None) -> str:
        # Keyset paging on (date_modified, id): an offset would skip or repeat rows that
        # are modified while the scan runs.
        if after is not None:
            stamp = sql_text(_stamp(after[0]))
            return (f"({table}.date_modified > {stamp} OR ({table}.date_modified = {stamp} "
                    f"AND {table}.id > {sql_text(after[1])}))")
        if since is not None:
            return f"{table}.date_modified >= {sql_text(_stamp(since))}"
        return ""

    def scan(self, module: str, since: datetime | None) -> Iterator[list[SugarRecord]]:
        table = module.lower()
        after: tuple[datetime, str] | None = None
        links = [{"name": "email_addresses", "value": _ADDRESS_FIELDS}]
        while True:
            # deleted=1 returns deleted and live rows together (seen on SuiteCRM 7.12).
            # Bare column names: process_order_by drops a prefixed term, and the
            # keyset paging below is only right in (date_modified, id) order.
            data = self._entry_list(module, self._keyset(table, after, since),
                                    "date_modified ASC, id ASC", 0, self._select(), links, 1)
            records = self._records(module, data)
            for record in records:
                if record.deleted and not record.addresses:
                    self._deleted_addresses(record)
            if records:
                yield records
            if len(records) < self.settings.page_size:
                return
            after = records[-1].key()

    def address_changes(self, since: datetime) -> Iterator[list[AddressChange]]:
        after: tuple[datetime, str] | None = None
        while True:
            data = self._entry_list(
                "EmailAddresses", self._keyset("email_addresses", after, since),
                "date_modified ASC, id ASC", 0,
                ["id", "email_address", "opt_out", "date_modified"], [], 0)
            rows = []
            for entry in data.get("entry_list") or []:
                values = _values(entry.get("name_value_list"))
                rows.append(AddressChange(
                    id=str(entry.get("id") or values.get("id")),
                    email=str(values.get("email_address") or ""),
                    opt_out=_flag(values.get("opt_out")),
                    date_modified=parse_sugar_datetime(str(values["date_modified"]))))
            if rows:
                yield rows
            if len(rows) < self.settings.page_size:
                return
            after = (rows[-1].date_modified, rows[-1].id)

    def count(self, module: str) -> int:
        data = self.call("get_entries_count", module_name=module, query="", deleted=0)
        return int((data or {}).get("result_count") or 0)

    @staticmethod
    def _by_address(table: str, module: str, emails: Sequence[str]) -> str:
        caps = ", ".join(sql_text(email.upper()) for email in emails)
        return (f"{table}.id IN (SELECT eabr.bean_id FROM email_addr_bean_rel eabr "
                f"JOIN email_addresses ea ON ea.id = eabr.email_address_id "
                f"WHERE eabr.bean_module = {sql_text(module)} AND eabr.deleted = 0 "
                f"AND ea.email_address_caps IN ({caps}))")

    def find(self, module: str, *, ids: Sequence[str] = (),
             emails: Sequence[str] = ()) -> list[SugarRecord]:
        table = module.lower()
        terms = []
        if ids:
            terms.append(f"{table}.id IN ({', '.join(sql_text(item) for item in ids)})")
        if emails:
            terms.append(self._by_address(table, module, emails))
        if not terms:
            return []
        query = " OR ".join(terms)
        links = [{"name": "email_addresses", "value": _ADDRESS_FIELDS}]
        found: list[SugarRecord] = []
        offset = 0
        while True:
            data = self._entry_list(module, query, "id ASC", offset, self._select(), links, 0)
            records = self._records(module, data)
            found.extend(records)
            if len(records) < self.settings.page_size:
                return found
            offset += len(records)

    # -- writing -----------------------------------------------------------------------
    def _set_entries(self, module: str, rows: list[list[dict[str, Any]]]) -> list[str]:
        ids: list[str] = []
        size = self.settings.batch_size
        for start in range(0, len(rows), size):
            data = self.call("set_entries", module_name=module,
                             name_value_lists=rows[start:start + size])
            ids.extend(str(item) for item in (data or {}).get("ids") or [])
        return ids

    @staticmethod
    def _failure(exc: RemoteError) -> WriteResult:
        return WriteResult(ok=False, error=str(exc), code=exc.code, retryable=exc.retryable)

    def apply(self, writes: Sequence[RecordWrite]) -> dict[int, WriteResult]:
        results: dict[int, WriteResult] = {}
        ids = {w.index: w.record.id for w in writes if w.record is not None}
        by_module: dict[str, list[tuple[RecordWrite, list[dict[str, Any]]]]] = {}
        for write in writes:
            values: dict[str, Any] = {}
            if write.record is None:
                # On create SuiteCRM honours email_opt_out (it is ignored on updates).
                # Sent only when meant: the address row may be shared and opted out.
                values = {**write.fields, "email1": write.email}
                if write.opt_out is not None:
                    values["email_opt_out"] = 1 if write.opt_out else 0
            elif write.delete:
                values = {"id": write.record.id, "deleted": 1}
            else:
                values = dict(write.fields)
                if write.record.address(write.email) is None:
                    values["email1"] = write.email
                if values:
                    values = {"id": write.record.id, **values}
            if values:
                by_module.setdefault(write.module, []).append((write, _pairs(values)))
        for module, items in by_module.items():
            try:
                created = self._set_entries(module, [row for _, row in items])
            except RemoteError as exc:
                for write, _ in items:
                    results[write.index] = self._failure(exc)
                continue
            for (write, _), record_id in zip(items, created, strict=False):
                ids.setdefault(write.index, record_id)
        self._apply_opt_outs([w for w in writes if w.record is not None and not w.delete
                              and w.opt_out is not None and w.index not in results], results)
        self._apply_links([w for w in writes if not w.delete and w.index not in results
                           and w.index in ids], ids, results)
        for write in writes:
            if write.index not in results:
                if write.index in ids:
                    results[write.index] = WriteResult(ok=True, record_id=ids[write.index])
                else:
                    results[write.index] = WriteResult(
                        ok=False, error="set_entries returned no id for this record",
                        code="no_id", retryable=True)
        return results

    def _apply_opt_outs(self, writes: list[RecordWrite], results: dict[int, WriteResult]) -> None:
        # The opt-out lives on the EmailAddresses row: a contact update ignores it.
        if not writes:
            return
        emails = sorted({w.email.upper() for w in writes})
        rows: dict[str, str] = {}
        try:
            for start in range(0, len(emails), self.settings.batch_size):
                chunk = emails[start:start + self.settings.batch_size]
                query = (f"email_addresses.email_address_caps IN "
                         f"({', '.join(sql_text(item) for item in chunk)})")
                data = self._entry_list("EmailAddresses", query, "", 0,
                                        ["id", "email_address"], [], 0,
                                        max_results=len(chunk) * 2)
                for entry in data.get("entry_list") or []:
                    values = _values(entry.get("name_value_list"))
                    rows[str(values.get("email_address") or "").upper()] = str(entry["id"])
            wanted: dict[str, bool] = {}
            for write in writes:
                address_id = rows.get(write.email.upper())
                if address_id is None:
                    results[write.index] = WriteResult(
                        ok=False, code="no_email_address", retryable=True,
                        error=f"no EmailAddresses row for {write.email} yet")
                    continue
                wanted[address_id] = bool(write.opt_out)
            updates = [_pairs({"id": key, "opt_out": 1 if value else 0})
                       for key, value in wanted.items()]
            self._set_entries("EmailAddresses", updates)
        except RemoteError as exc:
            for write in writes:
                results.setdefault(write.index, self._failure(exc))

    def _apply_links(self, writes: list[RecordWrite], ids: dict[int, str],
                     results: dict[int, WriteResult]) -> None:
        groups: dict[tuple[str, str, bool], list[RecordWrite]] = {}
        for write in writes:
            for list_id, add in write.links.items():
                groups.setdefault((list_id, write.module, add), []).append(write)
        for (list_id, module, add), members in groups.items():
            try:
                data = self.call("set_relationship", module_name="ProspectLists",
                                 module_id=list_id, link_field_name=module.lower(),
                                 related_ids=[ids[m.index] for m in members],
                                 name_value_list=[], delete=0 if add else 1)
            except RemoteError as exc:
                for member in members:
                    results.setdefault(member.index, self._failure(exc))
                continue
            if int((data or {}).get("failed") or 0):
                for member in members:
                    results.setdefault(member.index, WriteResult(
                        ok=False, code="link_failed", retryable=False,
                        error=f"set_relationship on target list {list_id} reported "
                              f"{data.get('failed')} failure(s); check the list id"))
