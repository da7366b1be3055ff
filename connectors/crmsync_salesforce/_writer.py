"""Writing changes back: sObject Collections (200 per call), Bulk 2.0 above a threshold.

Steps, each batched: find records by id, else by email (a query per 100 addresses);
create the missing ones; update fields (Collections ``PATCH``, or one Bulk 2.0 update
job when more than ``bulk_write_threshold`` records change); delete; then create,
update or remove CampaignMember rows for ``memberships``. Every change gets exactly one
:class:`WriteResult`; per-record errors (``statusCode``, ``message``) stay per record.
When the API budget runs out mid-way, what is left gets a retryable failure and the
next call raises :class:`QuotaExhausted`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from simple_salesforce.format import format_soql

from crmsync.errors import AuthError, RemoteError
from crmsync.model import Change, Op, WriteResult

from ._bulk import BulkJobFailed, bulk_ingest
from ._rest import RETRYABLE_CODES, SalesforceApi

__all__ = ["Writer"]

_OBJECT_OF = {"003": "Contact", "00Q": "Lead"}
_CHUNK = 200
_EMAILS_PER_QUERY = 100
_UPLOAD_LIMIT = 100_000_000  # bytes per Bulk 2.0 upload (simple-salesforce's figure)


@dataclass
class _Task:
    index: int
    change: Change
    record_id: str | None = None
    obj: str = "Contact"
    error: WriteResult | None = None
    members: dict[str, str | None] = field(default_factory=dict)

    def fail(self, result: WriteResult) -> None:
        if self.error is None:
            self.error = result


def _failure(code: str, message: str, *, retryable: bool = False) -> WriteResult:
    return WriteResult(ok=False, code=code, error=message,
                       retryable=retryable or code in RETRYABLE_CODES)


def _from_exception(exc: RemoteError) -> WriteResult:
    return WriteResult(ok=False, code=exc.code or "REMOTE_ERROR", error=str(exc),
                       retryable=exc.retryable)


def _record_error(result: dict[str, Any]) -> WriteResult:
    errors = result.get("errors") or [{}]
    first = errors[0]
    code = str(first.get("statusCode") or "UNKNOWN_EXCEPTION")
    return _failure(code, str(first.get("message") or code))


class Writer:
    def __init__(self, api: SalesforceApi, name: str) -> None:
        self.api = api
        self.settings = api.settings
        self.name = name

    # -- values ----------------------------------------------------------------------
    def _json_value(self, name: str, value: str | None) -> Any:
        if value is not None and name in self.settings.boolean_fields and \
                value.lower() in ("true", "false"):
            return value.lower() == "true"
        return value

    def _values(self, task: _Task, *, create: bool) -> dict[str, Any]:
        change = task.change
        values = {k: self._json_value(k, v) for k, v in change.fields.items()}
        if create or (change.previous_email and change.previous_email != change.email):
            values["Email"] = change.email
        if create:
            values.setdefault("LastName", self.settings.default_last_name)
            if task.obj == "Lead":
                values.setdefault("Company", self.settings.default_company)
        return values

    # -- batching helpers ------------------------------------------------------------
    def _batched(self, method: str, items: list[tuple[list[_Task], dict[str, Any]]],
                 on_ok: Any = None) -> None:
        """Collections calls of 200; each item is (the tasks it serves, one record)."""
        for start in range(0, len(items), _CHUNK):
            chunk = items[start:start + _CHUNK]
            try:
                results = self.api.collection(method, [record for _, record in chunk])
            except (RemoteError, AuthError) as exc:
                failure = _from_exception(exc) if isinstance(exc, RemoteError) else \
                    _failure("AUTH", str(exc))
                for tasks, _ in chunk:
                    for task in tasks:
                        task.fail(failure)
                if isinstance(exc, AuthError):
                    raise
                continue
            for (tasks, _), result in zip(chunk, results, strict=True):
                for task in tasks:
                    if not result.get("success"):
                        task.fail(_record_error(result))
                    elif on_ok is not None:
                        on_ok(task, result)

    # -- steps -----------------------------------------------------------------------
    def _resolve(self, tasks: list[_Task]) -> None:
        for task in tasks:
            record_id = task.change.ids.get(self.name)
            if record_id:
                task.record_id = record_id
                task.obj = _OBJECT_OF.get(record_id[:3], self.settings.create_object)
        self._follow_conversions([t for t in tasks if t.obj == "Lead" and t.record_id])
        wanted: dict[str, list[_Task]] = {}
        for task in tasks:
            if task.record_id is None:
                for email in (task.change.previous_email, task.change.email):
                    if email:
                        wanted.setdefault(email, []).append(task)
        emails = sorted(wanted)
        for obj in self.settings.objects:
            # Contacts first: a person who is both a Contact and a Lead is the Contact.
            extra = " AND IsConverted = false" if obj == "Lead" else ""
            for start in range(0, len(emails), _EMAILS_PER_QUERY):
                chunk = [e for e in emails[start:start + _EMAILS_PER_QUERY]
                         if any(t.record_id is None for t in wanted[e])]
                if not chunk:
                    continue
                soql = format_soql(f"SELECT Id, Email FROM {obj} WHERE Email IN {{}}{extra}",
                                   chunk)
                try:
                    rows = list(self.api.query(soql))
                except RemoteError as exc:
                    for email in chunk:
                        for task in wanted[email]:
                            task.fail(_from_exception(exc))
                    continue
                for row in sorted(rows, key=lambda r: str(r["Id"])):
                    for task in wanted.get(str(row.get("Email") or "").lower(), []):
                        if task.record_id is None:
                            task.record_id, task.obj = str(row["Id"]), obj

    def _follow_conversions(self, tasks: list[_Task]) -> None:
        """A converted Lead is read-only: its changes go to the Contact it became."""
        ids = sorted({str(t.record_id) for t in tasks})
        converted: dict[str, str] = {}
        for start in range(0, len(ids), _CHUNK):
            soql = format_soql("SELECT Id, ConvertedContactId FROM Lead WHERE Id IN {} "
                               "AND IsConverted = true", ids[start:start + _CHUNK])
            try:
                for row in self.api.query(soql):
                    if row.get("ConvertedContactId"):
                        converted[str(row["Id"])] = str(row["ConvertedContactId"])
            except RemoteError as exc:
                for task in tasks:
                    if task.record_id in ids[start:start + _CHUNK]:
                        task.fail(_from_exception(exc))
        for task in tasks:
            if task.record_id in converted:
                task.record_id, task.obj = converted[str(task.record_id)], "Contact"

    def _create(self, tasks: list[_Task]) -> None:
        # Several changes for one new address make one record, not duplicates.
        by_email: dict[str, list[_Task]] = {}
        for task in tasks:
            task.obj = self.settings.create_object
            by_email.setdefault(task.change.email, []).append(task)
        items = []
        for group in by_email.values():
            values: dict[str, Any] = {}
            for task in group:
                values.update(self._values(task, create=True))
            items.append((group, {"attributes": {"type": group[0].obj}, **values}))

        def created(task: _Task, result: dict[str, Any]) -> None:
            task.record_id = str(result["id"])

        self._batched("POST", items, created)

    def _update(self, tasks: list[_Task]) -> None:
        by_record: dict[str, list[_Task]] = {}
        for task in tasks:
            assert task.record_id is not None
            by_record.setdefault(task.record_id, []).append(task)
        # Several changes to one record merge into one row (later values win): the
        # APIs refuse the same id twice in a call.
        merged: dict[str, dict[str, Any]] = {}
        for record_id, group in by_record.items():
            values: dict[str, Any] = {}
            for task in group:
                values.update(self._values(task, create=False))
            merged[record_id] = values
        if len(merged) > self.settings.bulk_write_threshold:
            self._update_bulk(by_record, merged)
            return
        # One object after the other: a mixed call is split into chunks per type (10 max).
        order = sorted(merged, key=lambda rid: by_record[rid][0].obj)
        items = [(by_record[rid], {"attributes": {"type": by_record[rid][0].obj}, "id": rid,
                                   **merged[rid]}) for rid in order]
        self._batched("PATCH", items)

    def _update_bulk(self, by_record: dict[str, list[_Task]],
                     merged: dict[str, dict[str, Any]]) -> None:
        per_object: dict[str, list[str]] = {}
        for record_id in merged:
            per_object.setdefault(by_record[record_id][0].obj, []).append(record_id)
        for obj, all_ids in per_object.items():
            for ids in self._upload_chunks(all_ids, merged):
                self._update_job(obj, ids, by_record, merged)

    @staticmethod
    def _upload_chunks(ids: list[str], merged: dict[str, dict[str, Any]]) -> list[list[str]]:
        """Split so that no upload exceeds the documented 100 MB (one job each)."""
        chunks: list[list[str]] = [[]]
        size = 0
        for rid in ids:
            row = len(rid) + sum(len(str(v)) + 3 for v in merged[rid].values()) + 1
            if chunks[-1] and size + row > _UPLOAD_LIMIT:
                chunks.append([])
                size = 0
            chunks[-1].append(rid)
            size += row
        return chunks

    def _update_job(self, obj: str, ids: list[str], by_record: dict[str, list[_Task]],
                    merged: dict[str, dict[str, Any]]) -> None:
        columns = sorted({name for rid in ids for name in merged[rid]})
        rows = [[rid, *(self._csv_value(merged[rid], name) for name in columns)]
                for rid in ids]
        try:
            results = bulk_ingest(self.api, obj, "update", ["Id", *columns], rows)
        except (BulkJobFailed, RemoteError) as exc:
            for rid in ids:
                for task in by_record[rid]:
                    task.fail(_from_exception(exc))
            return
        for rid in ids:
            for task in by_record[rid]:
                if rid in results.failed:
                    error = results.failed[rid]
                    task.fail(_failure(error.split(":", 1)[0] or "BULK_ROW_FAILED", error))
                elif rid not in results.ok:
                    task.fail(_failure("BULK_UNPROCESSED", "the Bulk job did not process "
                                       "this record; it will be retried", retryable=True))

    @staticmethod
    def _csv_value(values: dict[str, Any], name: str) -> str:
        if name not in values:
            return ""  # Bulk API: an empty cell leaves the field as it is
        value = values[name]
        if value is None:
            return "#N/A"  # Bulk API: set the field to null
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def _delete(self, tasks: list[_Task]) -> None:
        items = [([task], {"id": task.record_id}) for task in tasks]
        self._batched("DELETE", items)

    def _memberships(self, tasks: list[_Task]) -> None:
        people: dict[str, list[_Task]] = {}
        for task in tasks:
            for key in task.change.memberships:
                if not key.startswith("campaign:"):
                    task.fail(_failure("UNSUPPORTED_MEMBERSHIP", f"{key!r}: Salesforce "
                                       "memberships are campaign:<CampaignId>"))
            if task.error is None and task.record_id:
                people.setdefault(task.record_id, []).append(task)
        if not people:
            return
        existing: dict[tuple[str, str], dict[str, Any]] = {}
        for column, prefix in (("ContactId", "003"), ("LeadId", "00Q")):
            ids = sorted(p for p in people if p.startswith(prefix))
            for start in range(0, len(ids), _CHUNK):
                soql = format_soql(f"SELECT Id, CampaignId, ContactId, LeadId, Status FROM "
                                   f"CampaignMember WHERE {column} IN {{}}",
                                   ids[start:start + _CHUNK])
                try:
                    for row in self.api.query(soql):
                        existing[(str(row[column]), str(row["CampaignId"]))] = row
                except RemoteError as exc:
                    for person in ids[start:start + _CHUNK]:
                        for task in people[person]:
                            task.fail(_from_exception(exc))
        creates: list[tuple[list[_Task], dict[str, Any]]] = []
        updates: list[tuple[list[_Task], dict[str, Any]]] = []
        deletes: list[tuple[list[_Task], dict[str, Any]]] = []
        wanted: dict[tuple[str, str], tuple[list[_Task], str | None]] = {}
        for person, group in people.items():
            for task in group:
                if task.error is not None:
                    continue
                for key, status in task.change.memberships.items():
                    slot = (person, key.split(":", 1)[1])
                    owners = wanted.get(slot, ([], None))[0]
                    wanted[slot] = ([*owners, task], status)
        for (person, campaign), (owners, status) in wanted.items():
            found = existing.get((person, campaign))
            if status is None:
                if found is not None:
                    deletes.append((owners, {"id": found["Id"]}))
            elif found is None:
                column = "LeadId" if person.startswith("00Q") else "ContactId"
                creates.append((owners, {"attributes": {"type": "CampaignMember"},
                                         "CampaignId": campaign, column: person,
                                         "Status": status}))
            elif found.get("Status") != status:
                updates.append((owners, {"attributes": {"type": "CampaignMember"},
                                         "id": found["Id"], "Status": status}))
        self._batched("POST", creates)
        self._batched("PATCH", updates)
        self._batched("DELETE", deletes)

    # -- entry point -----------------------------------------------------------------
    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        if not changes:
            return []
        self.api.quota.guard()  # nothing done yet: stop the run here, cleanly
        tasks = [_Task(index, change) for index, change in enumerate(changes)]
        self._resolve(tasks)
        deletes = [t for t in tasks if t.change.op == Op.DELETE and t.error is None]
        for task in deletes:
            if task.record_id is None:
                task.fail(_failure("NOT_FOUND", f"no Salesforce record for {task.change.email}"))
        self._delete([t for t in deletes if t.error is None])
        upserts = [t for t in tasks if t.change.op != Op.DELETE and t.error is None]
        to_create = [t for t in upserts if t.record_id is None]
        to_update = [t for t in upserts if t.record_id is not None
                     and self._values(t, create=False)]
        self._create(to_create)
        self._update([t for t in to_update if t.error is None])
        self._memberships([t for t in upserts if t.error is None and t.change.memberships])
        return [task.error or WriteResult(ok=True, record_id=task.record_id) for task in tasks]
