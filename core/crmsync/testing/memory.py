"""Reference in-memory connectors implementing the whole contract.

``memory`` is a CRM: records with fields, memberships (``"campaign:7" -> "Responded"``),
modification timestamps and tombstones. ``memory-esp`` is an ESP: recipients with a
status per list and groups, plus batch file exchange, sending and multi-list subscribe.

Stores live in the process, shared by name (``store = "demo"``), or in a JSON file
(``path = "crm.json"``) so a CLI run in another process sees the same data. They
are the engine's test doubles and the template for a real connector.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

from pydantic import field_validator

from ..contract import (
    Capabilities,
    Connector,
    ConnectorSettings,
    FileExchange,
    MessageSender,
    MultiListSubscriber,
    check_url_template,
    fill_url,
)
from ..errors import DataError, EventRejected
from ..files import large_csv_fields
from ..model import (
    Change,
    Contact,
    Cursor,
    Health,
    InboundRequest,
    MailingList,
    Op,
    Page,
    Rejected,
    SendResult,
    Status,
    Subscription,
    WriteResult,
    normalize_email,
    rejected_address,
)

__all__ = [
    "MemoryConnector",
    "MemoryEspConnector",
    "MemoryEspSettings",
    "MemorySettings",
    "MemoryStore",
    "store",
]

_STORES: dict[str, MemoryStore] = {}
_STORES_LOCK = threading.Lock()


class MemoryStore:
    """Records keyed by id; timestamps from a clock that never goes backwards."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self.lists: dict[str, dict[str, Any]] = {}
        self.sent: list[dict[str, Any]] = []
        self.imports: list[str] = []
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self._last = datetime(2020, 1, 1, tzinfo=UTC)
        if path is not None and path.exists():
            self._load()

    # -- persistence --------------------------------------------------------------------
    def _load(self) -> None:
        assert self.path is not None
        data = json.loads(self.path.read_text())
        self.records = data["records"]
        self.lists = data.get("lists", {})
        self.sent = data.get("sent", [])
        self.imports = data.get("imports", [])
        self._last = datetime.fromisoformat(data["last"])
        self._ids = itertools.count(int(data["next_id"]))

    def save(self) -> None:
        if self.path is None:
            return
        next_id = next(self._ids)
        self._ids = itertools.count(next_id)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")  # processes may share the file
        tmp.write_text(json.dumps({
            "records": self.records, "lists": self.lists, "sent": self.sent,
            "imports": self.imports, "last": self._last.isoformat(), "next_id": next_id,
        }))
        tmp.replace(self.path)

    # -- clock and ids -----------------------------------------------------------------
    def now(self) -> datetime:
        now = datetime.now(UTC)
        if now <= self._last:
            now = self._last + timedelta(microseconds=1)
        self._last = now
        return now

    def new_id(self, prefix: str = "M") -> str:
        return f"{prefix}{next(self._ids):08d}"

    def by_email(self, email: str) -> str | None:
        for record_id, record in self.records.items():
            if record["email"] == email and not record.get("deleted"):
                return record_id
        return None

    # -- test conveniences -------------------------------------------------------------
    def add(self, email: str, *, fields: dict[str, str | None] | None = None,
            memberships: dict[str, str] | None = None,
            lists: dict[str, str] | None = None) -> str:
        with self.lock:
            record_id = self.new_id()
            self.records[record_id] = {
                "email": normalize_email(email), "fields": dict(fields or {}),
                "memberships": dict(memberships or {}),
                "lists": {k: {"status": v, "groups": [], "at": None}
                          for k, v in (lists or {}).items()},
                "modified": self.now().isoformat(), "deleted": False, "previous_email": None,
            }
            self.save()
            return record_id

    def update(self, record_id: str, **changes: Any) -> None:
        with self.lock:
            record = self.records[record_id]
            for key in ("fields", "memberships"):
                if key in changes:
                    record[key].update(changes.pop(key))
            if "email" in changes:
                record["previous_email"] = record["email"]
                record["email"] = normalize_email(changes.pop("email"))
            record.update(changes)
            record["modified"] = self.now().isoformat()
            self.save()

    def seed(self, contacts: int, seed: int = 0, *, lists: Sequence[str] = ("1",)) -> None:
        rng = random.Random(seed)
        interests = ["news", "events", "offers", "tech"]
        with self.lock:
            for number in range(contacts):
                record_id = self.new_id()
                self.records[record_id] = {
                    "email": f"contact{seed}-{number}@example.com",
                    "fields": {"FirstName": f"First{number}", "LastName": f"Last{number}",
                               "OptOut": "false",
                               "Interests": ";".join(rng.sample(interests, rng.randint(0, 2)))},
                    "memberships": {},
                    "lists": {item: {"status": "subscribed", "groups": [], "at": None}
                              for item in lists},
                    "modified": self.now().isoformat(), "deleted": False,
                    "previous_email": None,
                }
            self.save()


def store(name: str = "default", path: Path | None = None) -> MemoryStore:
    """The shared store called ``name`` (or the one persisted at ``path``)."""
    key = str(path.resolve()) if path else name
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = MemoryStore(path)
        return _STORES[key]


def reset_stores() -> None:
    """Forget every in-process store (between tests)."""
    with _STORES_LOCK:
        _STORES.clear()


def _cursor_key(record_id: str, record: dict[str, Any]) -> tuple[str, str]:
    return (record["modified"], record_id)


class MemorySettings(ConnectorSettings):
    """Settings of the in-memory CRM."""

    store: str = "default"
    path: Path | None = None
    page_size: int = 500
    fail_emails: list[str] = []  # writes for these addresses fail (tests)
    # "placeholder": a deleted record is read with a stand-in address and no fields, as
    # CRMs that report deletions by id only (vTiger's sync) do
    deleted_address: Literal["kept", "placeholder"] = "kept"
    lose_emails: list[str] = []  # reads leave these out, as paging that loses rows (tests)
    latency_ms: float = 0.0  # each write answers after this long, as a vendor's API (tests)


class _MemoryBase(Connector):
    settings: Any

    def __init__(self, settings: ConnectorSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.store = store(self.settings.store, self.settings.path)

    def check(self) -> Health:
        return Health(ok=True, detail=f"{len(self.store.records)} records in memory")

    def _page(self, since: Cursor | None) -> Iterator[Page]:
        with self.store.lock:
            items = sorted(self.store.records.items(), key=lambda kv: _cursor_key(*kv))
        if since is not None:
            start = (since.at.isoformat(), since.tie_id)
            items = [kv for kv in items if _cursor_key(*kv) >= start]
        size = max(1, int(self.settings.page_size))
        for offset in range(0, len(items), size):
            chunk = items[offset:offset + size]
            records: list[Contact] = []
            rejected: list[Rejected] = []
            for record_id, record in chunk:
                problem = rejected_address(record_id, record["email"])
                if problem is not None:  # a store edited by hand (tests) may hold one
                    rejected.append(problem)
                elif record["email"] not in self.settings.lose_emails:
                    records.append(self._contact(record_id, record))
            last_id, last = chunk[-1]
            yield Page(records=records, rejected=rejected, cursor=Cursor(
                at=datetime.fromisoformat(last["modified"]), tie_id=last_id))

    def _contact(self, record_id: str, record: dict[str, Any]) -> Contact:
        raise NotImplementedError

    def read(self, since: Cursor | None) -> Iterator[Page]:
        return self._page(since)

    def _find(self, change: Change) -> str | None:
        record_id = change.ids.get(self.name)
        if record_id and record_id in self.store.records:
            return record_id
        for email in (change.previous_email, change.email):
            if email:
                found = self.store.by_email(email)
                if found:
                    return found
        return None


class MemoryConnector(_MemoryBase):
    """The in-memory CRM."""

    name: ClassVar[str] = "memory"
    Settings: ClassVar[type[ConnectorSettings]] = MemorySettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="crm", full_read=True, incremental_read=True, write=True, bulk_write=True,
        deletes=True, push_events=True, polling=True, lists=True, groups=True,
    )

    def full_read_count(self) -> int | None:
        with self.store.lock:
            return sum(1 for record in self.store.records.values() if not record.get("deleted"))

    def members(self, key: str) -> list[str]:
        with self.store.lock:
            return [record_id for record_id, record in self.store.records.items()
                    if key in record["memberships"] and not record.get("deleted")]

    def lists(self) -> list[MailingList]:
        with self.store.lock:
            keys = sorted({key for record in self.store.records.values()
                           for key in record["memberships"]})
        return [MailingList(id=key, name=key) for key in keys]

    def _contact(self, record_id: str, record: dict[str, Any]) -> Contact:
        if record.get("deleted") and self.settings.deleted_address == "placeholder":
            return Contact(email=f"deleted-{record_id.lower()}@memory.invalid",
                           ids={self.name: record_id}, deleted=True,
                           modified_at=datetime.fromisoformat(record["modified"]))
        return Contact(
            email=record["email"], ids={self.name: record_id}, fields=record["fields"],
            memberships=record["memberships"],
            modified_at=datetime.fromisoformat(record["modified"]),
            deleted=bool(record.get("deleted")), previous_email=record.get("previous_email"),
        )

    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        results = []
        if self.settings.latency_ms:
            time.sleep(self.settings.latency_ms / 1000)
        with self.store.lock:
            for change in changes:
                results.append(self._apply(change))
            self.store.save()
        return results

    def _apply(self, change: Change) -> WriteResult:
        if change.email in self.settings.fail_emails:
            return WriteResult(ok=False, error="rejected by test configuration",
                               code="FIELD_CUSTOM_VALIDATION_EXCEPTION")
        record_id = self._find(change)
        if change.op == Op.DELETE:
            if record_id is None:
                return WriteResult(ok=False, error="no such record", code="NOT_FOUND")
            self.store.records[record_id]["deleted"] = True
            self.store.records[record_id]["modified"] = self.store.now().isoformat()
            return WriteResult(ok=True, record_id=record_id)
        if record_id is None:
            record_id = self.store.new_id()
            self.store.records[record_id] = {
                "email": change.email, "fields": {}, "memberships": {}, "lists": {},
                "modified": "", "deleted": False, "previous_email": None,
            }
        record = self.store.records[record_id]
        if record["email"] != change.email:
            record["previous_email"], record["email"] = record["email"], change.email
        record["fields"].update(change.fields)
        for key, value in change.memberships.items():
            if value is None:
                record["memberships"].pop(key, None)
            else:
                record["memberships"][key] = value
        record["modified"] = self.store.now().isoformat()
        return WriteResult(ok=True, record_id=record_id)

    def decode_event(self, request: InboundRequest) -> list[Change]:
        """Events are JSON ``{"changes": [Change, ...]}`` (the reference format)."""
        try:
            data = json.loads(request.body)
            return [Change.model_validate(item) for item in data["changes"]]
        except Exception as exc:
            raise EventRejected(f"not a memory event: {type(exc).__name__}: {exc}") from None


class MemoryEspSettings(MemorySettings):
    """Settings of the in-memory ESP."""

    lists: list[str] = ["1", "2", "3"]
    delimiter: str = ";"
    # where a recipient "lives" (a test double has no web console: any page stands in)
    console_recipient_url: str | None = None

    @field_validator("console_recipient_url")
    @classmethod
    def _console_link(cls, value: str | None) -> str | None:
        return check_url_template(value, frozenset({"id", "email"}))


class MemoryEspConnector(_MemoryBase, FileExchange, MessageSender, MultiListSubscriber):
    """The in-memory ESP: recipients with a status per list, files, sending."""

    name: ClassVar[str] = "memory-esp"
    Settings: ClassVar[type[ConnectorSettings]] = MemoryEspSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="esp", full_read=True, incremental_read=True, write=True, bulk_write=True,
        deletes=True, push_events=True, lists=True, groups=True, file_exchange=True,
        send_message=True, multi_list_subscribe=True,
    )

    def lists(self) -> list[MailingList]:
        return [MailingList(id=item, name=f"List {item}") for item in self.settings.lists]

    def recipient_url(self, email: str, record_id: str | None = None) -> str | None:
        template = self.settings.console_recipient_url
        if not template:
            return None
        if record_id is None:
            with self.store.lock:
                record_id = self.store.by_email(email)
        return fill_url(template, id=record_id, email=email)

    def _contact(self, record_id: str, record: dict[str, Any]) -> Contact:
        subs = {
            list_id: Subscription(
                list_id=list_id, status=Status(value["status"]),
                groups=frozenset(value.get("groups", [])),
                changed_at=datetime.fromisoformat(value["at"]) if value.get("at") else None,
                reason=value.get("reason"), source=self.name)
            for list_id, value in record["lists"].items()
        }
        return Contact(email=record["email"], ids={self.name: record_id},
                       fields=record["fields"], subscriptions=subs,
                       modified_at=datetime.fromisoformat(record["modified"]),
                       deleted=bool(record.get("deleted")))

    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        with self.store.lock:
            results = [self._apply(change) for change in changes]
            self.store.save()
        return results

    def _apply(self, change: Change) -> WriteResult:
        if change.email in self.settings.fail_emails:
            return WriteResult(ok=False, error="rejected by test configuration", code="400")
        unknown = [item for item in change.subscriptions if item not in self.settings.lists]
        if unknown:
            return WriteResult(ok=False, error=f"unknown list(s) {unknown}", code="404")
        record_id = self._find(change)
        if change.op == Op.DELETE:
            if record_id is None:
                return WriteResult(ok=False, error="no such recipient", code="404")
            self.store.records[record_id]["deleted"] = True
            self.store.records[record_id]["modified"] = self.store.now().isoformat()
            return WriteResult(ok=True, record_id=record_id)
        if record_id is None:
            record_id = self.store.new_id("R")
            self.store.records[record_id] = {
                "email": change.email, "fields": {}, "memberships": {}, "lists": {},
                "modified": "", "deleted": False, "previous_email": None,
            }
        record = self.store.records[record_id]
        record["email"] = change.email
        record["fields"].update(change.fields)
        for list_id, sub in change.subscriptions.items():
            record["lists"][list_id] = {
                "status": sub.status.value, "groups": sorted(sub.groups),
                "at": (sub.changed_at or self.store.now()).isoformat(), "reason": sub.reason,
            }
        record["modified"] = self.store.now().isoformat()
        return WriteResult(ok=True, record_id=record_id)

    def decode_event(self, request: InboundRequest) -> list[Change]:
        return MemoryConnector.decode_event(self, request)  # type: ignore[arg-type]

    # -- file exchange: a plain CSV both ways ------------------------------------------
    def import_file_name(self, run_id: str) -> str:
        return f"import-{run_id}.csv"

    def write_import_file(self, out: IO[bytes], changes: Iterable[Change]) -> int:
        text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        writer = csv.writer(text, delimiter=self.settings.delimiter)
        writer.writerow(["email", "list", "status", "groups", "fields"])
        rows = 0
        for change in changes:
            subscriptions = dict(change.subscriptions)
            if change.op is Op.DELETE:  # a file cannot delete: opt out of every list
                subscriptions = {list_id: Subscription(list_id=list_id,
                                                       status=Status.UNSUBSCRIBED)
                                 for list_id in subscriptions or self.settings.lists}
            for list_id, sub in subscriptions.items():
                writer.writerow([change.email, list_id, sub.status.value,
                                 ",".join(sorted(sub.groups)),
                                 json.dumps(dict(change.fields), sort_keys=True)])
                rows += 1
        text.flush()
        text.detach()
        return rows

    def export_file_pattern(self) -> str:
        return "unsubscribed-*.csv"

    def read_export_file(self, data: IO[bytes], name: str) -> Iterator[Change | DataError]:
        text = io.TextIOWrapper(data, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=self.settings.delimiter)
        header = next(reader, None)
        if header != ["email", "list", "date", "reason"]:
            yield DataError(f"header {header} is not email;list;date;reason", line=1, source=name)
            return
        for line, row in enumerate(reader, start=2):
            try:
                email, list_id, date, reason = row
                at = datetime.fromisoformat(date)
                yield Change(email=email, source=self.name, reason=reason, occurred_at=at,
                             subscriptions={list_id: Subscription(
                                 list_id=list_id, status=Status.UNSUBSCRIBED, changed_at=at,
                                 reason=reason, source=self.name)})
            except ValueError as exc:
                yield DataError(str(exc), line=line, source=name)

    # -- what the real ESP does on its side, for tests and the demo ----------------------
    def import_file(self, data: bytes) -> int:
        """Apply an import file the way an ESP would: never lift an unsubscribe."""
        reader = csv.DictReader(io.StringIO(data.decode("utf-8")),
                                delimiter=self.settings.delimiter)
        count = 0
        with self.store.lock, large_csv_fields():
            for row in reader:
                record_id = self.store.by_email(row["email"])
                current = self.store.records[record_id]["lists"].get(row["list"]) \
                    if record_id else None
                status = row["status"]
                # an import never lifts an unsubscribe; a "pending" row asks the person
                # to confirm (the confirmation flow), which is the only way back in
                if current and current["status"] == "unsubscribed" and status != "pending":
                    status = "unsubscribed"
                self._apply(Change(email=row["email"], fields=json.loads(row["fields"]),
                                   subscriptions={row["list"]: Subscription(
                                       list_id=row["list"], status=Status(status),
                                       groups=frozenset(filter(None, row["groups"].split(","))))}))
                count += 1
            self.store.imports.append(f"{count} rows")
            self.store.save()
        return count

    def export_unsubscribed(self, since: datetime | None = None) -> bytes:
        """The unsubscription export an ESP would drop in the file space."""
        out = io.StringIO()
        writer = csv.writer(out, delimiter=self.settings.delimiter)
        writer.writerow(["email", "list", "date", "reason"])
        with self.store.lock:
            for record in self.store.records.values():
                for list_id, value in record["lists"].items():
                    at = value.get("at")
                    if value["status"] == "unsubscribed" and at and (
                        since is None or datetime.fromisoformat(at) >= since
                    ):
                        writer.writerow([record["email"], list_id, at,
                                         value.get("reason") or "unsubscribe link"])
        return out.getvalue().encode()

    def unsubscribe(self, email: str, list_id: str, reason: str = "unsubscribe link") -> None:
        """A recipient clicks "unsubscribe" (tests and the demo)."""
        with self.store.lock:
            record_id = self.store.by_email(normalize_email(email))
            if record_id is None:
                raise KeyError(email)
            lists = self.store.records[record_id]["lists"]
            groups = lists.get(list_id, {}).get("groups", [])
            lists[list_id] = {"status": "unsubscribed", "groups": groups,
                              "at": self.store.now().isoformat(), "reason": reason}
            self.store.records[record_id]["modified"] = self.store.now().isoformat()
            self.store.save()

    # -- sending and multi-list subscribe ------------------------------------------------
    def send(self, message_id: str, *, to: str | None = None, list_id: str | None = None,
             group_id: str | None = None) -> SendResult:
        with self.store.lock:
            if to:
                recipients = [normalize_email(to)]
            else:
                recipients = [r["email"] for r in self.store.records.values()
                              if r["lists"].get(list_id or "", {}).get("status") == "subscribed"
                              and (group_id is None
                                   or group_id in r["lists"][list_id or ""].get("groups", []))]
            self.store.sent.append({"message": message_id, "to": recipients})
            self.store.save()
        return SendResult(ok=True, message_id=message_id, recipients=len(recipients))

    def subscribe(self, contact: Contact, lists: Sequence[str], *, groups: Sequence[str] = (),
                  confirm: bool = True) -> list[WriteResult]:
        status = Status.PENDING if confirm else Status.SUBSCRIBED
        change = Change(email=contact.email, fields=contact.fields, source="subscribe",
                        subscriptions={item: Subscription(
                            list_id=item, status=status, groups=frozenset(groups),
                            explicit=True) for item in lists})
        [result] = self.write([change])
        return [result for _ in lists]


