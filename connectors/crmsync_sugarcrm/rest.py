"""The ``rest`` flavour: Sugar REST v10/v11.

Quirks kept here: the OAuth2 password grant with a custom ``platform``, the token in the
``OAuth-Token`` header, refresh-token rotation (owned by :class:`SugarOAuth2` alone),
``{"error","error_message"}`` bodies, ``next_offset`` = -1 at the end, the ``email``
array that a PUT replaces whole, ``/bulk`` batches and the ``/link`` endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import httpx

from crmsync.connect import ErrorMap, ErrorRule, Token, TokenAuth, idempotent
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

__all__ = ["REST_ERRORS", "RestFlavour", "SugarOAuth2"]

_TOKEN_ERRORS = {"invalid_grant", "need_login", "invalid_token"}

#: Sugar's ``{"error", "error_message"}`` answers, with what to do about each status.
REST_ERRORS = ErrorMap("Sugar", code_keys=("error",), message_keys=("error_message", "error"),
                       code_when_missing="http_{status}", rules=[
    ErrorRule(AuthError, status=401, advice="the new token was refused too; check the API "
              "user's access"),
    ErrorRule(RemoteError, status=400, advice="check the request and the OAuth2 client"),
    ErrorRule(RemoteError, status=409, advice="the record changed since it was read: read "
              "it again and retry"),
    ErrorRule(RemoteError, status=422, advice="fix the value named in the message"),
    ErrorRule(RemoteError, status=404, advice="check the module, record id or link name"),
    ErrorRule(RemoteError, status=403, advice="give the API user access to this module"),
    ErrorRule(RemoteError, status=503, advice="Sugar is in maintenance or unavailable: retry "
              "later"),
    ErrorRule(RemoteError, status=500, advice="the server failed (often a bad filter or "
              "field name): check the filter and the fields setting, then Sugar's log"),
])


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S+00:00")


class SugarOAuth2(TokenAuth):
    """The one owner of the access and refresh tokens (``OAuth-Token`` header).

    Sugar rotates refresh tokens: a refresh hands out a new one and the old one stops
    working. Two components refreshing on their own would log each other out, so every
    token request goes through this object, under its lock (:class:`TokenAuth`).
    """

    header = "OAuth-Token"
    scheme = ""
    requires_response_body = True  # which 401 means "token spent" is in the body

    def __init__(self, settings: SugarSettings, http: httpx.Client) -> None:
        super().__init__()
        self.settings = settings
        self.http = http
        self.token_errors = ErrorMap("Sugar", code_keys=("error",),
                                     message_keys=("error_message", "error"), rules=[
            ErrorRule(AuthError, status=(400, 401), advice=(
                "check the username setting, CRMSYNC_SUGARCRM_PASSWORD, client_id and "
                "CRMSYNC_SUGARCRM_CLIENT_SECRET, and that the platform "
                f"{settings.platform!r} is allowed (Admin > Configure API Platforms)"))])

    @property
    def url(self) -> str:
        return f"{self.settings.base_url}/rest/{self.settings.api_version}/oauth2/token"

    def is_refused(self, response: httpx.Response) -> bool:
        if response.status_code != 401:
            return False
        try:
            return str(response.json().get("error")) in _TOKEN_ERRORS
        except (ValueError, AttributeError):
            return True

    def _common(self) -> dict[str, Any]:
        secret = self.settings.client_secret
        return {"client_id": self.settings.client_id,
                "client_secret": secret.get_secret_value() if secret else "",
                "platform": self.settings.platform}

    def obtain(self) -> Token:
        return self._grant({
            "grant_type": "password", "username": self.settings.username,
            "password": self.settings.password.get_secret_value(), **self._common()},
            "log in")

    def refresh(self, token: Token) -> Token:
        return self._grant({"grant_type": "refresh_token", "refresh_token": token.refresh,
                            **self._common()}, "refresh the token")

    def _grant(self, body: dict[str, Any], what: str) -> Token:
        response = self.token_errors.call(self.http, "POST", self.url, what=f"refused to {what}",
                                          json=body, extensions=idempotent())
        data = response.json()
        if not isinstance(data, dict) or "access_token" not in data:
            raise AuthError(f"Sugar: {what}: no access_token in the answer; is base_url "
                            f"{self.settings.base_url} a Sugar instance?")
        return Token(value=str(data["access_token"]),
                     refresh=str(data["refresh_token"]) if data.get("refresh_token") else None)


class RestFlavour(SugarFlavour):
    """Sugar REST v10/v11."""

    def __init__(self, settings: SugarSettings, http: httpx.Client) -> None:
        super().__init__(settings, http)
        self.auth = SugarOAuth2(settings, http)
        self.root = f"{settings.base_url}/rest/{settings.api_version}"

    # -- transport ---------------------------------------------------------------------
    def call(self, method: str, path: str, *, body: Any = None,
             params: dict[str, Any] | None = None, safe: bool = False) -> Any:
        """One API call; ``safe`` marks a read made with POST (the transport may repeat
        it), a write is sent once."""
        response = REST_ERRORS.call(self.http, method, f"{self.root}/{path}",
                                    what=f"{method} /{path}", write=not safe, json=body,
                                    params=params, auth=self.auth,
                                    extensions=idempotent() if safe else None)
        return response.json() if response.content else None

    # -- reading -----------------------------------------------------------------------
    def check(self) -> str:
        self.call("GET", "ping", safe=True)
        return f"Sugar REST {self.settings.api_version} at {self.settings.base_url}"

    def _pages(self, path: str, body: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        offset = 0
        while True:
            data = self.call("POST", path, body={**body, "offset": offset}, safe=True)
            records = list(data.get("records") or [])
            if records:
                yield records
            next_offset = int(data.get("next_offset", -1))
            if next_offset == -1 or not records:
                return
            offset = next_offset

    def target_lists(self) -> list[tuple[str, str]]:
        body = {"filter": [], "fields": "id,name", "max_num": self.settings.page_size,
                "order_by": "name:ASC"}
        return [(str(row["id"]), str(row.get("name") or row["id"]))
                for page in self._pages("ProspectLists/filter", body) for row in page]

    def list_members(self, list_id: str, module: str) -> set[str]:
        members: set[str] = set()
        offset = 0
        while True:
            data = self.call("GET", f"ProspectLists/{list_id}/link/{module.lower()}",
                             params={"fields": "id", "max_num": self.settings.page_size,
                                     "offset": offset}, safe=True)
            members.update(str(row["id"]) for row in data.get("records") or [])
            offset = int(data.get("next_offset", -1))
            if offset == -1 or not data.get("records"):
                return members

    def _fields(self) -> str:
        return ",".join(dict.fromkeys([*self.settings.fields, "email", "deleted"]))

    def _record(self, module: str, row: dict[str, Any]) -> SugarRecord:
        addresses = [
            SugarEmailAddress(email=str(item.get("email_address") or ""),
                              opt_out=bool(item.get("opt_out")),
                              primary=bool(item.get("primary_address")),
                              invalid=bool(item.get("invalid_email")),
                              reply_to=bool(item.get("reply_to_address")),
                              id=str(item.get("email_address_id") or ""))
            for item in row.get("email") or []
        ]
        return SugarRecord(
            module=module, id=str(row["id"]),
            date_modified=parse_sugar_datetime(str(row["date_modified"])),
            deleted=row.get("deleted") in (True, 1, "1", "true"),
            fields={name: field_text(row.get(name)) for name in self.settings.fields},
            addresses=addresses)

    @staticmethod
    def _keyset(after: tuple[datetime, str] | None, since: datetime | None
                ) -> list[dict[str, Any]]:
        # Keyset paging on (date_modified, id): offset paging would skip or repeat rows
        # that are modified while the scan runs.
        if after is not None:
            stamp = _iso(after[0])
            return [{"$or": [{"date_modified": {"$gt": stamp}},
                             {"$and": [{"date_modified": {"$equals": stamp}},
                                       {"id": {"$gt": after[1]}}]}]}]
        if since is not None:
            return [{"date_modified": {"$gte": _iso(since)}}]
        return []

    def count(self, module: str) -> int:
        data = self.call("GET", f"{module}/count", safe=True)
        return int((data or {}).get("record_count") or 0)

    def scan(self, module: str, since: datetime | None) -> Iterator[list[SugarRecord]]:
        after: tuple[datetime, str] | None = None
        while True:
            data = self.call("POST", f"{module}/filter", safe=True, body={
                "filter": self._keyset(after, since), "max_num": self.settings.page_size,
                "offset": 0, "order_by": "date_modified:ASC,id:ASC",
                "fields": self._fields(), "deleted": True})
            records = [self._record(module, row) for row in data.get("records") or []]
            if records:
                yield records
            if int(data.get("next_offset", -1)) == -1 or not records:
                return
            after = records[-1].key()

    def address_changes(self, since: datetime) -> Iterator[list[AddressChange]]:
        after: tuple[datetime, str] | None = None
        while True:
            data = self.call("POST", "EmailAddresses/filter", safe=True, body={
                "filter": self._keyset(after, since), "max_num": self.settings.page_size,
                "offset": 0, "order_by": "date_modified:ASC,id:ASC",
                "fields": "email_address,opt_out"})
            rows = [AddressChange(id=str(row["id"]), email=str(row.get("email_address") or ""),
                                  opt_out=bool(row.get("opt_out")),
                                  date_modified=parse_sugar_datetime(str(row["date_modified"])))
                    for row in data.get("records") or []]
            if rows:
                yield rows
            if int(data.get("next_offset", -1)) == -1 or not rows:
                return
            after = (rows[-1].date_modified, rows[-1].id)

    def find(self, module: str, *, ids: Sequence[str] = (),
             emails: Sequence[str] = ()) -> list[SugarRecord]:
        terms: list[dict[str, Any]] = []
        if ids:
            terms.append({"id": {"$in": list(ids)}})
        if emails:
            # "link.remote_field" searches a related field: the record's addresses.
            terms.append({"email_addresses.email_address": {"$in": list(emails)}})
        if not terms:
            return []
        body = {"filter": [{"$or": terms}], "max_num": self.settings.page_size,
                "fields": self._fields()}
        return [self._record(module, row)
                for page in self._pages(f"{module}/filter", body) for row in page]

    # -- writing -----------------------------------------------------------------------
    def _email_array(self, write: RecordWrite) -> list[dict[str, Any]] | None:
        record = write.record
        # An address row is shared: a flag we do not mean to set is left out, so Sugar
        # keeps the stored one (or its default for a new address) instead of ours.
        fresh: dict[str, Any] = {"email_address": write.email}
        if write.opt_out is not None:
            fresh["opt_out"] = write.opt_out
        if record is None:
            return [{**fresh, "primary_address": True}]
        target = record.address(write.email)
        renamed = target is None
        if not renamed and write.opt_out is None:
            return None
        # A PUT replaces the whole address set: send every address the record has, with
        # its flags, or Sugar unlinks the ones left out.
        old = None
        if renamed:
            old = record.address(write.previous_email) if write.previous_email else None
            old = old or record.primary()
        out = []
        for item in record.addresses:
            entry = {"email_address": item.email, "primary_address": item.primary,
                     "opt_out": item.opt_out, "invalid_email": item.invalid,
                     "reply_to_address": item.reply_to}
            if item is old:
                entry = {**fresh, "primary_address": item.primary,
                         "reply_to_address": item.reply_to}
            elif item is target and write.opt_out is not None:
                entry["opt_out"] = write.opt_out
            out.append(entry)
        if renamed and old is None:
            out.append({**fresh, "primary_address": not out})
        return out

    def _record_request(self, write: RecordWrite) -> dict[str, Any] | None:
        version = self.settings.api_version
        if write.delete:
            assert write.record is not None
            return {"url": f"/{version}/{write.module}/{write.record.id}", "method": "DELETE"}
        data: dict[str, Any] = dict(write.fields)
        emails = self._email_array(write)
        if emails is not None:
            data["email"] = emails
        if write.record is None:
            return {"url": f"/{version}/{write.module}", "method": "POST",
                    "data": json.dumps(data)}
        if not data:
            return None
        return {"url": f"/{version}/{write.module}/{write.record.id}", "method": "PUT",
                "data": json.dumps(data)}

    def _bulk(self, requests: list[dict[str, Any]]) -> list[tuple[int, Any]]:
        """Run requests through ``/bulk`` in chunks: ``(status, contents)`` per request."""
        answers: list[tuple[int, Any]] = []
        size = self.settings.batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start:start + size]
            try:
                data = self.call("POST", "bulk", body={"requests": chunk})
            except RemoteError as exc:
                answers.extend((exc.status or 500, {"error": exc.code or "bulk_failed",
                                                    "error_message": str(exc)})
                               for _ in chunk)
                continue
            for item in data or []:
                answers.append((int(item.get("status", 500)), item.get("contents")))
            answers.extend((500, {"error": "missing", "error_message": "no answer in /bulk"})
                           for _ in range(len(chunk) - len(data or [])))
        return answers

    @staticmethod
    def _failure(status: int, contents: Any) -> WriteResult:
        if isinstance(contents, dict):
            code = str(contents.get("error") or f"http_{status}")
            message = str(contents.get("error_message") or code)
        else:
            code, message = f"http_{status}", str(contents)[:200]
        return WriteResult(ok=False, error=message, code=code,
                           retryable=status in REST_ERRORS.retryable_statuses)

    def apply(self, writes: Sequence[RecordWrite]) -> dict[int, WriteResult]:
        results: dict[int, WriteResult] = {}
        ids: dict[int, str] = {w.index: w.record.id for w in writes if w.record is not None}
        pending = [(w, self._record_request(w)) for w in writes]
        sent = [(w, req) for w, req in pending if req is not None]
        for (write, _), (status, contents) in zip(
                sent, self._bulk([req for _, req in sent]), strict=True):
            if status >= 400:
                results[write.index] = self._failure(status, contents)
            elif write.record is None and isinstance(contents, dict):
                ids[write.index] = str(contents.get("id"))
        # Target-list links once every record exists: one bulk link per list and module.
        version = self.settings.api_version
        groups: dict[tuple[str, str], list[RecordWrite]] = {}
        removals: list[tuple[RecordWrite, dict[str, Any]]] = []
        for write in writes:
            if write.index in results or write.delete:
                continue
            record_id = ids[write.index]
            for list_id, add in write.links.items():
                if add:
                    groups.setdefault((list_id, write.module), []).append(write)
                else:
                    removals.append((write, {
                        "url": f"/{version}/ProspectLists/{list_id}/link/"
                               f"{write.module.lower()}/{record_id}", "method": "DELETE"}))
        link_requests: list[tuple[list[RecordWrite], dict[str, Any]]] = [
            (members, {"url": f"/{version}/ProspectLists/{list_id}/link", "method": "POST",
                       "data": json.dumps({"link_name": module.lower(),
                                           "ids": [ids[m.index] for m in members]})})
            for (list_id, module), members in groups.items()
        ] + [([write], request) for write, request in removals]
        answers = self._bulk([request for _, request in link_requests])
        for (members, _), (status, contents) in zip(link_requests, answers, strict=True):
            if status >= 400:
                for member in members:
                    results.setdefault(member.index, self._failure(status, contents))
        for write in writes:
            results.setdefault(write.index, WriteResult(ok=True, record_id=ids.get(write.index)))
        return results
