"""Writing changes: ``revise`` for updates, ``create``, ``delete``, ``add_related``.

vTiger has no batch write, so the savings are in the reads around the writes: contacts
without a known id are looked up by address 99 at a time (``email in (...)``), a change
that would not alter the record is not sent, and campaign member lists are fetched once
per batch. ``update`` is never used: it replaces the whole record and blanks every field
it is not given. An address shared by several contacts gets the change on all of them
(an opt-out must reach every record that mails that address).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from crmsync.errors import CrmsyncError, RemoteError
from crmsync.model import Change, Op, WriteResult

from ._api import VtigerApi, is_denied
from ._settings import VtigerSettings
from ._values import FieldCodec, WsId
from ._vtql import ROW_CAP, in_list, select

__all__ = ["ContactWriter"]

log = logging.getLogger("crmsync_vtiger")
# one address short of the row cap: a full answer then proves duplicates, not a cut
LOOKUP_CHUNK = ROW_CAP - 1


class ContactWriter:
    """Applies a batch of changes; one :class:`WriteResult` per change, in order."""

    def __init__(self, api: VtigerApi, codec: FieldCodec, settings: VtigerSettings, name: str,
                 campaign_id: Callable[[str], str]) -> None:
        self.api = api
        self.codec = codec
        self.settings = settings
        self.name = name
        self.campaign_id = campaign_id
        self._members: dict[str, set[str]] = {}

    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        if not changes:
            return []
        self._members = {}
        wanted: set[str] = set()
        for change in changes:
            if self._given_id(change) is None:
                wanted.update(e for e in (change.email, change.previous_email) if e)
        try:
            by_email = self._lookup(sorted(wanted))
        except CrmsyncError as exc:
            return [_failed(exc) for _ in changes]
        results = []
        for change in changes:
            try:
                results.append(self._apply(change, by_email))
            except CrmsyncError as exc:
                results.append(_failed(exc))
        return results

    # -- finding records ----------------------------------------------------------------
    def _given_id(self, change: Change) -> str | None:
        raw = change.ids.get(self.name)
        if not raw:
            return None
        try:
            return str(WsId.coerce(raw, self.codec.id_prefix))
        except ValueError:
            return None

    def _lookup(self, emails: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Live contacts by lower-cased address, 99 addresses per query."""
        found: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(emails), LOOKUP_CHUNK):
            chunk = emails[start:start + LOOKUP_CHUNK]
            offset = 0
            while True:
                rows = self.api.call("query", {"query": select(
                    "Contacts", where=f"email in {in_list(chunk)}", order_by="id",
                    offset=offset)}) or []
                for row in rows:
                    found.setdefault(str(row.get("email", "")).strip().lower(),
                                     []).append(dict(row))
                if len(rows) < ROW_CAP:
                    break
                offset += ROW_CAP  # duplicates pushed the answer past the row cap
        for rows in found.values():
            rows.sort(key=lambda row: WsId.parse(str(row["id"])).crmid)
        return found

    def _targets(self, change: Change,
                 by_email: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        for email in (change.previous_email, change.email):
            if email and by_email.get(email):
                return by_email[email]
        return []

    # -- applying -----------------------------------------------------------------------
    def _apply(self, change: Change, by_email: dict[str, list[dict[str, Any]]]) -> WriteResult:
        given = self._given_id(change)
        if change.op == Op.DELETE:
            ids = [given] if given else [str(r["id"]) for r in self._targets(change, by_email)]
            if not ids:
                return WriteResult(ok=False, code="RECORD_NOT_FOUND",
                                   error=f"no vTiger contact {change.email} to delete")
            for ws_id in ids:
                self.api.call("delete", {"id": ws_id})
            return WriteResult(ok=True, record_id=ids[0])
        values = self._values(change)
        if given:
            try:
                self._revise(given, values, None)
                record_id = given
            except RemoteError as exc:
                if not is_denied(exc):
                    raise
                # a stale id (deleted or merged record): fall back to the address
                found = self._lookup([change.email])
                record_id = self._upsert(change, values, self._targets(change, found), found)
        else:
            record_id = self._upsert(change, values, self._targets(change, by_email), by_email)
        return self._memberships(change, record_id)

    def _values(self, change: Change) -> dict[str, str]:
        values = {}
        for field, value in change.fields.items():
            if field == "id":
                continue
            if field not in self.codec.types:
                raise RemoteError(f"vTiger {self.codec.module} has no field {field!r}: check "
                                  "the field names in [fields] and [[lists]] against "
                                  "`describe` (custom fields are named cf_<n>)",
                                  code="UNKNOWN_FIELD")
            if field not in self.codec.editable:
                raise RemoteError(f"vTiger field {field!r} is read-only: remove it from the "
                                  "fields crmsync writes", code="READ_ONLY_FIELD")
            try:
                values[field] = self.codec.to_vtiger(field, value)
            except ValueError as exc:
                raise RemoteError(f"field {field}: {exc}", code="INVALID_VALUE") from None
        if change.previous_email:
            values["email"] = change.email
        return values

    def _upsert(self, change: Change, values: dict[str, str], rows: list[dict[str, Any]],
                by_email: dict[str, list[dict[str, Any]]]) -> str:
        """Revise the rows found, or create; keep ``by_email`` true for later changes."""
        if not rows:
            created = self._create(change, values)
            by_email[change.email] = [created]
            return str(created["id"])
        wanted = {**values, "email": change.email} if change.previous_email else values
        for row in rows:
            self._revise(str(row["id"]), wanted, row)
            row.update(wanted)
        if change.previous_email:
            by_email[change.email] = by_email.pop(change.previous_email, rows)
        return str(rows[0]["id"])

    def _revise(self, ws_id: str, values: dict[str, str],
                current: Mapping[str, Any] | None) -> None:
        if current is not None:
            values = {k: v for k, v in values.items() if str(current.get(k, "")) != v}
            if not values:
                return  # already so: no call, no new modifiedtime
        elif not values:
            return
        self.api.call("revise", {"element": _json({"id": ws_id, **values})})

    def _create(self, change: Change, values: dict[str, str]) -> dict[str, Any]:
        element = {"email": change.email, **values}
        if not element.get("lastname"):
            element["lastname"] = (self.settings.default_lastname
                                   or change.email.split("@", 1)[0])
        owner = self.settings.owner_id or self.api.session().user_id
        element.setdefault("assigned_user_id", owner)
        created = self.api.call("create", {"elementType": "Contacts",
                                           "element": _json(element)})
        return dict(created)

    def _memberships(self, change: Change, record_id: str) -> WriteResult:
        refused = []
        for key, status in change.memberships.items():
            kind, _, raw = key.partition(":")
            if kind != "campaign":
                refused.append(f"{key}: vTiger lists are campaigns (campaign:<id>)")
                continue
            campaign = self.campaign_id(raw)
            if status is None:
                refused.append(f"{key}: the vTiger webservice cannot remove a campaign "
                               "member; remove it in vTiger (Campaign > Contacts)")
                continue
            # the per-link status (campaignrelstatus) is not writable through the API
            if record_id in self._campaign_members(campaign):
                continue
            self.api.call("add_related", {"sourceRecordId": campaign,
                                          "relatedRecordId": record_id,
                                          "relationIdLabel": "Contacts"})
            self._members[campaign].add(record_id)
        if refused:
            return WriteResult(ok=False, record_id=record_id, code="UNSUPPORTED",
                               error="; ".join(refused))
        return WriteResult(ok=True, record_id=record_id)

    def _campaign_members(self, campaign: str) -> set[str]:
        if campaign not in self._members:
            rows = self.api.call("retrieve_related", {
                "id": campaign, "relatedType": "Contacts", "relatedLabel": "Contacts"}) or []
            self._members[campaign] = {str(row["id"]) for row in rows}
        return self._members[campaign]


def _json(value: dict[str, str]) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


def _failed(exc: CrmsyncError) -> WriteResult:
    return WriteResult(ok=False, error=str(exc), code=getattr(exc, "code", None)
                       or type(exc).__name__, retryable=bool(getattr(exc, "retryable", False)))
