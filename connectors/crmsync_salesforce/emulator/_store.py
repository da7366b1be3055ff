"""The emulator's in-memory org: sObject records, their schema and validation.

Records are plain dicts keyed by field name, typed as Salesforce types them (bool,
aware ``datetime``, ``str`` or ``None``). Validation returns the per-record errors the
real API returns (``statusCode``, ``message``, ``fields``), so the same checks serve
sObject CRUD, sObject Collections and Bulk 2.0 ingest.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ._soql import Condition, Query

__all__ = ["SCHEMA", "Org", "RecordError", "format_datetime"]

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

# type per field; the second set holds fields the API refuses to write.
SCHEMA: dict[str, dict[str, Any]] = {
    "Contact": {
        "prefix": "003",
        "fields": {
            "Id": "id", "FirstName": "string", "LastName": "string", "Email": "email",
            "HasOptedOutOfEmail": "boolean", "DoNotCall": "boolean", "Phone": "string",
            "Interests__c": "multipicklist", "IsEmailBounced": "boolean",
            "CreatedDate": "datetime", "LastModifiedDate": "datetime",
            "SystemModstamp": "datetime", "IsDeleted": "boolean", "MasterRecordId": "id",
        },
        "readonly": {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted",
                     "MasterRecordId"},
        "required": ("LastName",),
        "children": {"CampaignMembers": "ContactId"},
    },
    "Lead": {
        "prefix": "00Q",
        "fields": {
            "Id": "id", "FirstName": "string", "LastName": "string", "Email": "email",
            "Company": "string", "Status": "string", "HasOptedOutOfEmail": "boolean",
            "DoNotCall": "boolean", "Interests__c": "multipicklist", "IsConverted": "boolean",
            "ConvertedContactId": "id", "CreatedDate": "datetime",
            "LastModifiedDate": "datetime", "SystemModstamp": "datetime", "IsDeleted": "boolean",
            "MasterRecordId": "id",
        },
        "readonly": {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted",
                     "IsConverted", "ConvertedContactId", "MasterRecordId"},
        "required": ("LastName", "Company"),
        "children": {"CampaignMembers": "LeadId"},
    },
    "Campaign": {
        "prefix": "701",
        "fields": {
            "Id": "id", "Name": "string", "IsActive": "boolean", "CreatedDate": "datetime",
            "LastModifiedDate": "datetime", "SystemModstamp": "datetime", "IsDeleted": "boolean",
        },
        "readonly": {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted"},
        "required": ("Name",),
        "children": {},
    },
    "CampaignMember": {
        "prefix": "00v",
        "fields": {
            "Id": "id", "CampaignId": "id", "ContactId": "id", "LeadId": "id",
            "LeadOrContactId": "id", "Status": "string", "HasResponded": "boolean",
            "Email": "email", "HasOptedOutOfEmail": "boolean", "CreatedDate": "datetime",
            "LastModifiedDate": "datetime", "SystemModstamp": "datetime", "IsDeleted": "boolean",
        },
        "readonly": {"Id", "LeadOrContactId", "HasResponded", "Email", "HasOptedOutOfEmail",
                     "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted"},
        "required": ("CampaignId",),
        "children": {},
        "create_only": {"CampaignId", "ContactId", "LeadId"},
    },
}
_PREFIXES = {spec["prefix"]: name for name, spec in SCHEMA.items()}
_RESPONDED = {"Responded"}


def format_datetime(value: datetime) -> str:
    """The REST API's datetime format: ``2024-01-05T10:00:00.000+0000``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{value.microsecond // 1000:03d}+0000"


@dataclass
class RecordError:
    status_code: str
    message: str
    fields: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {"statusCode": self.status_code, "message": self.message, "fields": self.fields}


class Org:
    """Every record of the emulated org, with indexes for the lookups the API needs."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in SCHEMA}
        self._counter = itertools.count(1)
        self._last = datetime(2024, 1, 1, tzinfo=UTC)
        self._by_email: dict[str, dict[str, set[str]]] = {"Contact": defaultdict(set),
                                                           "Lead": defaultdict(set)}
        self._members_of: dict[str, set[str]] = defaultdict(set)
        self.campaign_statuses: dict[str, tuple[str, ...]] = {}
        self.reject_emails: set[str] = set()
        self.recycle_bin_start = datetime(2024, 1, 1, tzinfo=UTC)
        self.changed: list[tuple[str, str]] = []  # (object, id) touched since last drain

    # -- clock and ids -----------------------------------------------------------------
    def now(self) -> datetime:
        """Millisecond precision like SystemModstamp, never going back; ties do happen."""
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        self._last = max(self._last, now)
        return self._last

    def tick(self) -> datetime:
        """A stamp strictly after every earlier one (an edit that must sort last)."""
        self._last = max(self.now(), self._last + timedelta(milliseconds=1))
        return self._last

    def new_id(self, obj: str) -> str:
        # Unique in the first 15 characters, like real ids (the last 3 are a case checksum).
        return f"{SCHEMA[obj]['prefix']}{next(self._counter):012d}AAA"

    @staticmethod
    def object_of(record_id: str) -> str | None:
        return _PREFIXES.get(record_id[:3]) if isinstance(record_id, str) else None

    def get(self, record_id: str) -> dict[str, Any] | None:
        obj = self.object_of(record_id)
        return self.records[obj].get(record_id) if obj else None

    # -- indexes -----------------------------------------------------------------------
    def _index(self, obj: str, record: dict[str, Any], add: bool) -> None:
        if obj in self._by_email and record.get("Email"):
            bucket = self._by_email[obj][str(record["Email"]).lower()]
            (bucket.add if add else bucket.discard)(record["Id"])
        if obj == "CampaignMember":
            for key in ("ContactId", "LeadId"):
                if record.get(key):
                    bucket = self._members_of[record[key]]
                    (bucket.add if add else bucket.discard)(record["Id"])

    def members_of(self, record_id: str) -> list[dict[str, Any]]:
        members = self.records["CampaignMember"]
        return [members[i] for i in sorted(self._members_of.get(record_id, ()))]

    # -- writes ------------------------------------------------------------------------
    def insert(self, obj: str, values: dict[str, Any], *, stamp: datetime | None = None) -> str:
        """Insert already validated ``values``; return the new id."""
        when = stamp or self.now()
        record: dict[str, Any] = {name: None for name in SCHEMA[obj]["fields"]}
        for name, kind in SCHEMA[obj]["fields"].items():
            if kind == "boolean":
                record[name] = False
        record.update(values)
        record.update(Id=self.new_id(obj), CreatedDate=when, LastModifiedDate=when,
                      SystemModstamp=when, IsDeleted=False)
        if obj == "CampaignMember":
            self._derive_member(record)
            record["Status"] = record.get("Status") or "Sent"
            record["HasResponded"] = record["Status"] in _RESPONDED
        self.records[obj][record["Id"]] = record
        self._index(obj, record, True)
        self.changed.append((obj, record["Id"]))
        return str(record["Id"])

    def _derive_member(self, record: dict[str, Any]) -> None:
        person = self.get(record.get("ContactId") or record.get("LeadId") or "")
        record["LeadOrContactId"] = record.get("ContactId") or record.get("LeadId")
        if person is not None:
            record["Email"] = person.get("Email")
            record["HasOptedOutOfEmail"] = person.get("HasOptedOutOfEmail", False)

    def update(self, record_id: str, values: dict[str, Any], *,
               stamp: datetime | None = None) -> None:
        obj = self.object_of(record_id)
        assert obj is not None
        record = self.records[obj][record_id]
        self._index(obj, record, False)
        record.update(values)
        when = stamp or self.now()
        record["LastModifiedDate"] = record["SystemModstamp"] = when
        if obj == "CampaignMember":
            record["HasResponded"] = record.get("Status") in _RESPONDED
        self._index(obj, record, True)
        self.changed.append((obj, record_id))
        if obj in ("Contact", "Lead") and "HasOptedOutOfEmail" in values:
            for member in self.members_of(record_id):
                member["HasOptedOutOfEmail"] = record["HasOptedOutOfEmail"]

    def delete(self, record_id: str) -> None:
        obj = self.object_of(record_id)
        assert obj is not None
        record = self.records[obj][record_id]
        if obj == "CampaignMember":
            # CampaignMember has no undelete(), and what cannot be undeleted skips the
            # recycle bin: the row is gone at once, queryAll never shows it deleted.
            self._index(obj, record, False)
            del self.records[obj][record_id]
            self.changed.append((obj, record_id))
            return
        when = self.now()
        record.update(IsDeleted=True, LastModifiedDate=when, SystemModstamp=when)
        self.changed.append((obj, record_id))
        if obj in ("Contact", "Lead"):
            for member in self.members_of(record_id):
                member.update(IsDeleted=True, SystemModstamp=when, LastModifiedDate=when)

    def merge(self, master_id: str, loser_ids: list[str]) -> None:
        """Merge duplicates as Salesforce does: up to two losers of the master's object go
        to the recycle bin with ``MasterRecordId`` set, their campaign memberships move to
        the master (a campaign it is already in keeps the master's), the master is touched."""
        obj = self.object_of(master_id)
        if obj not in ("Contact", "Lead"):
            raise KeyError(master_id)
        assert obj is not None
        master = self.records[obj].get(master_id)
        if master is None or master["IsDeleted"]:
            raise KeyError(master_id)
        if not 1 <= len(loser_ids) <= 2:
            raise ValueError("a merge takes the master and one or two other records")
        losers = [self.records[obj].get(i) for i in loser_ids]
        if any(r is None or r["IsDeleted"] or r["Id"] == master_id for r in losers):
            raise ValueError(f"merge: {loser_ids} are not live {obj} records besides the master")
        key = "ContactId" if obj == "Contact" else "LeadId"
        campaigns = {m["CampaignId"] for m in self.members_of(master_id) if not m["IsDeleted"]}
        when = self.tick()
        for loser in losers:
            assert loser is not None
            for member in self.members_of(loser["Id"]):
                if member["IsDeleted"]:
                    continue
                self._index("CampaignMember", member, False)
                if member["CampaignId"] in campaigns:
                    del self.records["CampaignMember"][member["Id"]]  # no recycle bin
                    continue
                member[key] = master_id
                campaigns.add(member["CampaignId"])
                self._derive_member(member)
                member["LastModifiedDate"] = member["SystemModstamp"] = when
                self._index("CampaignMember", member, True)
            loser.update(IsDeleted=True, MasterRecordId=master_id, LastModifiedDate=when,
                         SystemModstamp=when)
            self.changed.append((obj, loser["Id"]))
        self.update(master_id, {}, stamp=when)

    def purge_recycle_bin(self) -> int:
        """Hard-delete what is in the recycle bin, as Salesforce does after 15 days."""
        purged = 0
        for obj, records in self.records.items():
            for record_id in [i for i, r in records.items() if r["IsDeleted"]]:
                self._index(obj, records[record_id], False)
                del records[record_id]
                purged += 1
        self.recycle_bin_start = self.tick()
        return purged

    # -- validation --------------------------------------------------------------------
    def coerce(self, obj: str, values: dict[str, Any], *,
               from_csv: bool = False) -> tuple[dict[str, Any], list[RecordError]]:
        """Values typed as the schema says, or the errors the API gives for them."""
        spec = SCHEMA[obj]
        out: dict[str, Any] = {}
        errors: list[RecordError] = []
        for name, raw in values.items():
            if name in ("attributes", "Id", "id"):
                continue
            kind = spec["fields"].get(name)
            if kind is None:
                errors.append(RecordError(
                    "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj}",
                    [name]))
                continue
            value = raw
            if from_csv:
                if raw == "":
                    continue  # Bulk API: an empty cell leaves the field unchanged
                if raw == "#N/A":
                    value = None
            if kind == "boolean":
                if isinstance(value, str) and value.lower() in ("true", "false"):
                    value = value.lower() == "true"
                if not isinstance(value, bool):
                    errors.append(RecordError(
                        "INVALID_TYPE_ON_FIELD_IN_RECORD",
                        f"{name}: value not of required type: {raw}", [name]))
                    continue
            elif value is not None and not isinstance(value, str):
                value = str(value)
            if kind == "email" and value and not _EMAIL.match(str(value)):
                errors.append(RecordError(
                    "INVALID_EMAIL_ADDRESS", f"{name}: invalid email address: {value}", [name]))
                continue
            out[name] = value
        return out, errors

    def check_write(self, obj: str, values: dict[str, Any], record_id: str | None
                    ) -> list[RecordError]:
        spec = SCHEMA[obj]
        errors: list[RecordError] = []
        readonly = sorted(set(values) & spec["readonly"])
        if record_id is not None:
            readonly += sorted(set(values) & spec.get("create_only", set()))
        if readonly:
            errors.append(RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(readonly)}. Please check the "
                "security settings of this field and verify that it is read/write for your "
                "profile or permission set.", readonly))
        current: dict[str, Any] = {}
        if record_id is not None:
            if self.object_of(record_id) != obj or len(record_id) not in (15, 18):
                return [RecordError("MALFORMED_ID",
                                    f"{obj} ID: id value of incorrect type: {record_id}", ["Id"])]
            found = self.records[obj].get(record_id)
            if found is None:
                return [RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id",
                                    [])]
            if found["IsDeleted"]:
                return [RecordError("ENTITY_IS_DELETED", "entity is deleted", [])]
            if found.get("IsConverted"):
                return [RecordError("CANNOT_UPDATE_CONVERTED_LEAD",
                                    "cannot reference converted lead", [])]
            current = found
        merged = {**current, **values}
        if record_id is None:
            missing = [name for name in spec["required"] if not merged.get(name)]
            if missing:
                errors.append(RecordError(
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(missing)}]", missing))
        email = str(merged.get("Email") or "").lower()
        if obj in ("Contact", "Lead") and email and email in self.reject_emails:
            errors.append(RecordError(
                "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "This address is blocked by the Block_Test_Domains validation rule", ["Email"]))
        if obj == "CampaignMember":
            errors += self._check_member(merged, record_id)
        return errors

    def _check_member(self, merged: dict[str, Any], record_id: str | None) -> list[RecordError]:
        campaign = self.records["Campaign"].get(merged.get("CampaignId") or "")
        if campaign is None or campaign["IsDeleted"]:
            return [RecordError("INVALID_CROSS_REFERENCE_KEY",
                                "invalid cross reference id", ["CampaignId"])]
        person_id = merged.get("ContactId") or merged.get("LeadId")
        person = self.get(person_id or "")
        if person is None or person["IsDeleted"]:
            return [RecordError("REQUIRED_FIELD_MISSING",
                                "Required fields are missing: [ContactId or LeadId]",
                                ["ContactId", "LeadId"])]
        status = merged.get("Status")
        allowed = self.campaign_statuses.get(campaign["Id"])
        if status and allowed and status not in allowed:
            return [RecordError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                f"Status: bad value for restricted picklist field: {status}",
                                ["Status"])]
        if record_id is None:
            for member in self.members_of(person_id or ""):
                if member["CampaignId"] == campaign["Id"] and not member["IsDeleted"]:
                    return [RecordError("DUPLICATE_VALUE", "Already a campaign member.", [])]
        return []

    # -- queries -----------------------------------------------------------------------
    def candidates(self, query: Query, *, include_deleted: bool) -> Iterator[dict[str, Any]]:
        records = self.records[query.object]
        ids: Iterable[str] | None = None
        for cond in query.where:
            if cond.op not in ("=", "IN"):
                continue
            values = cond.value if cond.op == "IN" else (cond.value,)
            if cond.field == "Id":
                ids = [v for v in values if isinstance(v, str)]
                break
            if cond.field == "Email" and query.object in self._by_email:
                index = self._by_email[query.object]
                ids = sorted({i for v in values if isinstance(v, str)
                              for i in index.get(v.lower(), ())})
                break
            if cond.field in ("ContactId", "LeadId") and query.object == "CampaignMember":
                ids = sorted({i for v in values if isinstance(v, str)
                              for i in self._members_of.get(v, ())})
                break
        source = (records[i] for i in ids if i in records) if ids is not None \
            else iter(records.values())
        for record in source:
            if record["IsDeleted"] and not include_deleted:
                continue
            if all(_matches(record.get(c.field), c) for c in query.where):
                yield record


def _comparable(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _matches(value: Any, cond: Condition) -> bool:
    if cond.op in ("IN", "NOTIN"):
        found = _comparable(value) in {_comparable(v) for v in cond.value}
        return found if cond.op == "IN" else not found
    if cond.op == "=":
        return bool(_comparable(value) == _comparable(cond.value))
    if cond.op == "!=":
        return bool(_comparable(value) != _comparable(cond.value))
    if value is None or cond.value is None:
        return False
    left, right = _comparable(value), _comparable(cond.value)
    try:
        return bool({"<": left < right, "<=": left <= right, ">": left > right,
                     ">=": left >= right}[cond.op])
    except TypeError:
        return False
