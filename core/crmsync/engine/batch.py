"""The batch run: ESP unsubscriptions into the CRM, then CRM changes out to the ESP.

One run, in order:

1. **recover**: finish what a killed run left half-done (an import file written or
   uploaded but not committed; inbound rows staged but not written to the CRM);
2. **inbound**: read the ESP's unsubscriptions (export files from the file space, or
   the ESP API since the ``esp`` cursor), stage them, decide each against the consent
   policy, write the CRM in batches, run post-operations, journal and commit;
   processed files move to the archive;
3. **outbound**: read the CRM (full, or since the ``crm`` cursor minus the overlap
   window), map to per-list status and groups, diff against the snapshots, decide,
   then either stream an import file that is uploaded atomically with a manifest, or
   write through the ESP API in batches; snapshots, journal and cursor are committed
   only once the ESP side has acknowledged.

Inbound runs first so that an unsubscribe the ESP reports is known before stale CRM
data could be sent the other way. A run killed anywhere and started again ends as an
uninterrupted run would: staged work is finished, not redone, and a change the ESP or
CRM already acknowledged is not sent twice (the snapshots say it is already there).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import gc
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from sqlalchemy import Connection

from ..config import Config
from ..contract import Connector, FileExchange
from ..errors import (
    AuthError,
    ConfigError,
    CrmsyncError,
    DataError,
    QuotaExhausted,
    RateLimited,
    RemoteError,
    StateError,
    TransportError,
)
from ..files import FileSpace, Manifest, allow_large_csv_fields
from ..hooks import Hooks, PostOpContext
from ..model import Change, Contact, Cursor, Op, Page, Status, Subscription, WriteResult
from ..state import (
    JournalEntry,
    Snapshot,
    StateStore,
    content_hash,
    journal_row,
    snapshot_row,
    status_hash,
)
from .completeness import IncompleteRead, checked_full_read
from .consent import decide
from .mapping import ListMapper

__all__ = ["BatchSync", "Failure", "RunStats"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]


@dataclass
class RunStats:
    """What a run did; ``sync --json`` prints it."""

    run_id: str = ""
    mode: str = "batch"
    esp_mode: str = "api"
    full: bool = False
    resend: bool = False
    dry_run: bool = False
    status: str = "running"
    crm_read: int = 0
    esp_written: int = 0
    esp_unsubscribes_read: int = 0
    crm_written: int = 0
    failed: int = 0
    skipped_unchanged: int = 0
    consent_kept: int = 0
    post_operations: int = 0
    recovered: int = 0
    files_uploaded: list[str] = field(default_factory=list)
    files_archived: list[str] = field(default_factory=list)
    plan: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    report: str | None = None
    stopped_reason: str | None = None
    duration_s: float = 0.0

    def count(self, list_id: str, side: str, what: str, n: int = 1) -> None:
        bucket = self.plan.setdefault(list_id, {}).setdefault(side, {})
        bucket[what] = bucket.get(what, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()}


@dataclass
class Failure:
    """A record that did not go through: which side, who, which list, why, retryable."""

    side: str
    email: str
    list_id: str
    reason: str
    where: str = ""
    code: str = ""
    retryable: bool = False


@dataclass
class _Pending:
    """A change and what to commit once the receiving side acknowledged it."""

    change: Change
    key: str
    snapshots: list[Snapshot]
    journal: list[JournalEntry]
    fields_hash: str | None = None
    fields_view: dict[str, str | None] | None = None
    outbox_id: int | None = None
    applied: tuple[Change, dict[str, Subscription]] | None = None
    # The status changes a CRM record made, for the post-operations that follow them
    # (queued in the same transaction as the commit).
    post_operation: Change | None = None
    # What to commit when the write fails: the consent decision stands, but the
    # receiving side is still behind, so the next run writes it again.
    snapshots_if_failed: list[Snapshot] = field(default_factory=list)

    def spool_rows(self, db_time: Callable[[datetime], str]) -> list[tuple[Any, ...]]:
        """What to commit for this change as rows of the commit spool (CSV), each
        tagged ``s`` (snapshot), ``j`` (journal) or ``f`` (fields), already in the
        state store's raw form: the commit only executes them."""
        rows: list[tuple[Any, ...]] = [("s", *snapshot_row(s, db_time)) for s in self.snapshots]
        rows.extend(("j", *journal_row(j, db_time)) for j in self.journal)
        if self.fields_hash is not None:
            rows.append(("f", self.fields_hash, None if self.fields_view is None
                         else json.dumps(self.fields_view), self.key))
        if self.change.op is Op.DELETE:
            rows.append(("d", self.key))
        if self.post_operation is not None:
            rows.append(("p", self.post_operation.model_dump_json()))
        return rows


# Columns of a spooled row (after its tag) that are NULL when empty: CSV has no NULL.
_SPOOL_NULLABLE = {"s": (4,), "j": (5, 9, 10), "f": (1,), "d": (), "p": ()}


def _from_spool(row: list[str]) -> tuple[str, tuple[Any, ...]]:
    tag, values = row[0], row[1:]
    out: list[Any] = values
    for index in _SPOOL_NULLABLE[tag]:
        if not out[index]:
            out[index] = None
    return tag, tuple(out)


_COMMITTED = Change.model_construct(email="committed@crmsync.invalid")


# A commit spool written by an earlier crmsync (``.commit.jsonl``, one JSON object per
# contact) is still committed: a run killed before an upgrade loses nothing.
def _legacy_spool_rows(d: dict[str, Any], db_time: Callable[[datetime], str]
                       ) -> list[tuple[Any, ...]]:
    snapshots = [Snapshot(
        contact_key=s["contact_key"], list_id=s["list_id"], status=Status(s["status"]),
        groups=frozenset(s["groups"]), crm_status=Status(s["crm_status"]) if s["crm_status"]
        else None, hash=s["hash"], changed_at=datetime.fromisoformat(s["changed_at"]),
        source=s["source"]) for s in d["snapshots"]]
    journal = [JournalEntry(**(j | {"at": datetime.fromisoformat(j["at"]) if j.get("at")
                                    else None})) for j in d["journal"]]
    return _Pending(_COMMITTED, d["key"], snapshots, journal, d["fields_hash"],
                    d.get("fields_view")).spool_rows(db_time)


_set = object.__setattr__
_Model = TypeVar("_Model", bound=BaseModel)


def _trusted(cls: type[_Model], values: dict[str, Any]) -> _Model:
    """A pydantic model from values the engine already holds validated, every field
    given, in field order: what ``model_construct`` ends with, without its per-field
    alias and default look-ups (half the cost of building a change per contact)."""
    model: _Model = BaseModel.__new__(cls)
    _set(model, "__dict__", values)
    _set(model, "__pydantic_fields_set__", set(values))
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


def _subscription(list_id: str, status: Status, groups: frozenset[str] = frozenset(),
                  changed_at: datetime | None = None, reason: str | None = None,
                  source: str | None = None, explicit: bool = False) -> Subscription:
    """A Subscription from values the engine already holds validated (hot path)."""
    return _trusted(Subscription, {
        "list_id": list_id, "status": status, "groups": groups, "changed_at": changed_at,
        "reason": reason, "source": source, "explicit": explicit})


def _change(email: str, *, op: Op = Op.UPSERT, ids: Mapping[str, str] | None = None,
            previous_email: str | None = None, fields: Mapping[str, str | None] | None = None,
            memberships: Mapping[str, str | None] | None = None,
            subscriptions: Mapping[str, Subscription] | None = None,
            occurred_at: datetime | None = None, source: str = "", reason: str | None = None,
            event_id: str | None = None) -> Change:
    """A Change from a validated contact's values (hot path): email already normal."""
    return _trusted(Change, {
        "email": email, "op": op, "ids": {} if ids is None else ids,
        "previous_email": previous_email, "fields": {} if fields is None else fields,
        "memberships": {} if memberships is None else memberships,
        "subscriptions": {} if subscriptions is None else subscriptions,
        "occurred_at": datetime.now(UTC) if occurred_at is None else occurred_at,
        "source": source, "reason": reason, "event_id": event_id})


@contextlib.contextmanager
def _streaming_gc() -> Iterator[None]:
    """Fewer cyclic garbage collections for the length of a run.

    A run streams: what it allocates per contact is freed by reference counting, so
    the collector's passes (every 700 allocations by default) find almost nothing and
    cost a fifth of a full export. Here it runs every 50,000 allocations, and
    :meth:`BatchSync._pages` collects every eight pages what little is cyclic
    (SQLAlchemy statements holding a page's ids): with objects alive before the run
    frozen out of the passes, that collection only looks at the run's own live
    objects. The thresholds are put back after the run.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


class BatchSync:
    """One batch run between a CRM connector and an ESP connector."""

    def __init__(
        self,
        config: Config,
        crm: Connector,
        esp: Connector,
        store: StateStore,
        *,
        hooks: Hooks | None = None,
        files: FileSpace | None = None,
        progress: Progress | None = None,
        max_attempts: int = 5,
        spool_dir: Path | None = None,
    ) -> None:
        if not config.lists:
            raise ConfigError("no [[lists]] in the configuration: map at least one ESP list")
        self.config = config
        self.crm = crm
        self.esp = esp
        self.store = store
        self.hooks = hooks or Hooks()
        self._post_operations_on = self.hooks.has_post_operations
        self.mapper = ListMapper(config)
        self.policy = config.consent.resubscribe
        self.files = files
        self.file_mode = config.esp is not None and config.esp.mode == "files"
        if self.file_mode:
            if not isinstance(esp, FileExchange):
                raise ConfigError(f"[esp] mode = \"files\" but {esp.name} exchanges no files: "
                                  "use mode = \"api\"")
            if files is None:
                raise ConfigError("[esp] mode = \"files\" needs a [files] file space")
        self.progress = progress or (lambda phase, n: None)
        self.max_attempts = max_attempts
        self.spool_dir = spool_dir or config.path(".crmsync-spool")
        self.stats = RunStats()
        self.failures: list[Failure] = []
        self._dry_conn: Connection | None = None
        self._repairs: list[tuple[Contact, str, str, Status, Snapshot]] = []
        self._resend = False
        self._short_read: IncompleteRead | None = None

    # -- transactions (a dry run shares one that is rolled back) --------------------------
    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        if self._dry_conn is not None:
            yield self._dry_conn
            return
        with self.store.begin() as conn:
            yield conn

    # -- the run --------------------------------------------------------------------------
    def run(self, *, full: bool = False, dry_run: bool = False,
            resend: bool = False) -> RunStats:
        """One run. ``full``: read every CRM contact (else since the cursor); changed
        ones go out. ``resend``: read every contact and send again, changed or not, each
        subscribed contact's lists and fields and every unsubscribe crmsync knows, to
        repair an ESP that lost or drifted from what crmsync sent (pending ones are not
        re-sent: see docs/batch.md); nothing is journaled, since nothing changed."""
        started = time.monotonic()
        stats = self.stats
        self._resend = stats.resend = resend
        stats.full = full or resend or self.store.get_cursor("crm") is None
        stats.dry_run = dry_run
        stats.esp_mode = "files" if self.file_mode else "api"
        stats.run_id = self.store.start_run("batch", full=stats.full, dry_run=dry_run)
        self.hooks.run_started(stats.run_id, "batch", stats.full)
        try:
            if dry_run:
                with self.store.engine.connect() as conn:
                    transaction = conn.begin()
                    self._dry_conn = conn
                    try:
                        self._inbound(dry_run=True)
                        self._outbound(full=stats.full, dry_run=True)
                    finally:
                        self._dry_conn = None
                        transaction.rollback()
            else:
                # one writer of snapshots at a time: a real-time worker pauses meanwhile
                with self.store.exclusive("batch", wait_s=120), _streaming_gc():
                    self._recover()
                    self._run_post_operations()
                    self._inbound(dry_run=False)
                    self._outbound(full=stats.full, dry_run=False)
            stats.status = "partial" if self.failures else "succeeded"
        except QuotaExhausted as exc:
            stats.status = "stopped"
            stats.stopped_reason = str(exc)
            log.warning("run stopped cleanly, resumable: %s", exc)
        except CrmsyncError as exc:
            stats.status = "failed"
            stats.stopped_reason = str(exc)
            raise
        except BaseException as exc:  # a bug, or the process being stopped: say so
            stats.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            stats.stopped_reason = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            stats.failed = len(self.failures)
            stats.duration_s = round(time.monotonic() - started, 3)
            if self.failures and not dry_run:
                try:
                    stats.report = str(self._write_report(stats.run_id))
                except OSError as exc:  # the report must never stop the run finishing
                    log.error("cannot write the failed-records report (%s): fix "
                              "[sync] report_dir; this run's %d failure(s) stay in its "
                              "stats", exc, len(self.failures))
            self.store.finish_run(stats.run_id, stats.status, stats.as_dict())
            self.hooks.run_finished(stats.run_id, stats.as_dict())
        return stats

    # -- one change at a time (the real-time worker) -----------------------------------------
    def apply_esp_changes(self, changes: Sequence[Change]) -> list[Failure]:
        """Apply ESP-side changes (webhook events) to the CRM now: consent, CRM write,
        journal, post-operations (and their ESP follow-ups). Returns what failed."""
        before = len(self.failures)
        self._inbound_decide(changes, [None] * len(changes), dry_run=False)
        self._flush_followups_api()
        return self.failures[before:]

    def apply_crm_records(self, records: Sequence[Contact]) -> list[Failure]:
        """Send CRM records (a notification, a poll) to the ESP API now: mapping, diff,
        consent, write, commit. Returns what failed."""
        before = len(self.failures)
        self._send_and_commit(self._outbound_page(list(records)))
        self._flush_crm_repairs()
        self._run_post_operations()
        self._flush_followups_api()
        return self.failures[before:]

    # -- recovery -------------------------------------------------------------------------
    def _recover(self) -> None:
        for record in self.store.files_in("out", ["writing"]):
            with self._tx() as conn:
                self.store.drop_batch(conn, record["name"])
                self.store.set_file(conn, record["name"], direction="out",
                                    run_id=record["run_id"], status="abandoned")
            for path in (self.spool_dir / record["name"], self._commit_file(record["name"])):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        for record in self.store.files_in("out", ["staged", "uploaded"]):
            name = record["name"]
            if record["status"] == "staged":
                spool = self.spool_dir / name
                if not spool.exists() or not self._commit_file(name).exists():
                    with self._tx() as conn:
                        self.store.drop_batch(conn, name)
                        self.store.set_file(conn, name, direction="out", run_id=record["run_id"],
                                            status="abandoned")
                    continue
                self._upload(name, spool, record["rows"], record["sha256"], record["run_id"],
                             record["info"])
            cursor = record["info"].get("cursor")
            self._commit_export(name, Cursor.model_validate(cursor) if cursor else None,
                                record["info"].get("followups", []))
            self.stats.recovered += 1

    # -- inbound: the ESP's unsubscriptions into the CRM ---------------------------------
    def _inbound(self, *, dry_run: bool) -> None:
        if self.file_mode:
            self._inbound_files(dry_run=dry_run)
        else:
            self._inbound_api(dry_run=dry_run)
        if not dry_run:
            self._apply_staged_inbound()

    def _inbound_files(self, *, dry_run: bool) -> None:
        assert self.files is not None and isinstance(self.esp, FileExchange)
        folder = self.config.files.export_dir
        for name in self._new_exports(folder, dry_run=dry_run):
            batch = f"file:{name}"
            count = 0
            # One transaction stages the whole file (all of it or none), streamed in
            # chunks so a large export does not have to fit in memory.
            with self._tx() as conn, self.files.open_whole(folder, name) as handle:
                if handle is None:  # it changed while it was read: left for the next run
                    continue
                chunk: list[Change] = []
                for item in self.esp.read_export_file(handle, name):
                    if isinstance(item, DataError):
                        self.failures.append(Failure("esp", "", "", item.reason,
                                                     f"{name}:{item.line or ''}"))
                        continue
                    count += 1
                    chunk.append(item)
                    if len(chunk) >= 2000:
                        self._stage_inbound(conn, chunk, batch, name, dry_run=dry_run)
                        chunk = []
                self._stage_inbound(conn, chunk, batch, name, dry_run=dry_run)
                if not dry_run:
                    size, modified = self.files.read_stamps[name]  # only that is archived
                    self.store.set_file(conn, f"in:{name}", direction="in",
                                        run_id=self.stats.run_id, status="staged", rows=count,
                                        info={"size": size, "modified": modified})
            self.stats.esp_unsubscribes_read += count
            self.progress("esp unsubscriptions", count)

    def _new_exports(self, folder: str, *, dry_run: bool) -> Sequence[str]:
        """Exports not read yet (an applied one is archived on the way), less those the
        ESP may still be writing: they are left for a later run."""
        assert self.files is not None and isinstance(self.esp, FileExchange)
        fresh = []
        for name in self.files.list(folder, self.esp.export_file_pattern()):
            known = self.store.file(f"in:{name}")
            if known and known["status"] in ("staged", "applied"):
                if known["status"] == "applied" and not dry_run:
                    self._archive(name)
                continue
            if known and known["status"] == "archived":
                continue
            fresh.append(name)
        return self.files.settled(folder, fresh, self.config.files.stable_s)

    def _stage_inbound(self, conn: Connection, changes: list[Change], batch: str, where: str,
                       *, dry_run: bool) -> None:
        if dry_run:
            self._inbound_decide(changes, [None] * len(changes), dry_run=True)
            return
        self.store.stage(conn, "crm", [{"payload": c.model_dump(mode="json"),
                                        "snapshot": {"where": where}} for c in changes],
                         run_id=self.stats.run_id, batch=batch)

    def _inbound_api(self, *, dry_run: bool) -> None:
        cursor = self.store.get_cursor("esp")
        if cursor is None and not self.esp.capabilities.incremental_read:
            return
        # The first run reads every recipient, so unsubscribes older than crmsync are
        # known before anything is sent; later runs read what changed since the cursor.
        started = Cursor(at=datetime.now(UTC))
        since = None if cursor is None else Cursor(
            at=cursor.at - timedelta(seconds=self.config.sync.overlap_s),
            tie_id="", data=cursor.data)
        last = cursor or Cursor(at=datetime(1970, 1, 1, tzinfo=UTC))
        for page in self.esp.read(since):
            changes = [c for c in (self._unsubscriptions_of(r) for r in page.records) if c]
            self.stats.esp_unsubscribes_read += len(changes)
            self.progress("esp unsubscriptions", len(changes))
            if dry_run:
                self._inbound_decide(changes, [None] * len(changes), dry_run=True)
            else:
                with self._tx() as conn:
                    self.store.stage(conn, "crm", [{"payload": c.model_dump(mode="json"),
                                                    "snapshot": {"where": "esp api"}}
                                                   for c in changes],
                                     run_id=self.stats.run_id, batch="api")
                self._apply_staged_inbound()
                if page.cursor is not None and page.cursor.key() >= last.key():
                    last = page.cursor
                    with self._tx() as conn:
                        self.store.set_cursor(conn, "esp", last)
        if cursor is None and not dry_run and last.key() < started.key():
            with self._tx() as conn:  # an ESP without cursors: start from this run
                self.store.set_cursor(conn, "esp", started)

    def _unsubscriptions_of(self, record: Contact) -> Change | None:
        subs = {list_id: sub for list_id, sub in record.subscriptions.items()
                if sub.status == Status.UNSUBSCRIBED and list_id in self.mapper.by_list}
        if not subs:
            return None
        return Change(email=record.email, ids=record.ids, subscriptions=subs,
                      source=f"esp:{self.esp.name}", occurred_at=record.modified_at
                      or datetime.now(UTC))

    def _apply_staged_inbound(self) -> None:
        after = 0
        size = self.config.sync.batch_size
        while True:
            rows = self.store.pending("crm", limit=size, after_id=after)
            if not rows:
                break
            after = rows[-1]["id"]
            changes = [Change.model_validate(row["payload"]) for row in rows]
            self._inbound_decide(changes, rows, dry_run=False)
        for record in self.store.files_in("in", ["staged"]):
            name = record["name"][len("in:"):]
            if not self.store.pending("crm", batch=f"file:{name}", limit=1):
                with self._tx() as conn:
                    self.store.set_file(conn, record["name"], direction="in",
                                        run_id=record["run_id"], status="applied",
                                        rows=record["rows"], info=record["info"])
                self._archive(name)

    def _archive(self, name: str) -> None:
        """Move an applied export to the archive, unless it changed since it was read (it
        is then read again next run). A failure is reported and the run goes on: the
        outbound half must not wait for an archive folder."""
        assert self.files is not None
        folder = self.config.files.export_dir
        read = (self.store.file(f"in:{name}") or {}).get("info") or {}
        try:
            with contextlib.suppress(FileNotFoundError):  # moved by an interrupted run
                if "size" in read and list(self.files.stamp(folder, name)) != [
                        read["size"], read["modified"]]:
                    log.warning("%s changed after it was read: not archived, read again "
                                "next run", name)
                    with self._tx() as conn:
                        self.store.set_file(conn, f"in:{name}", direction="in",
                                            run_id=self.stats.run_id, status="changed")
                    return
                self.files.archive(folder, name, self.config.files.archive_dir)
        except TransportError as exc:
            self.failures.append(Failure(
                "esp", "", "", f"{exc} (its unsubscribes were applied; it is archived by the "
                "next run once the archive folder works)", where=name, code="archive"))
            return
        with self._tx() as conn:
            self.store.set_file(conn, f"in:{name}", direction="in", run_id=self.stats.run_id,
                                status="archived")
        self.stats.files_archived.append(name)

    def _inbound_decide(self, changes: Sequence[Change], rows: Sequence[dict[str, Any] | None],
                        *, dry_run: bool, follow_up: bool = False) -> list[Change]:
        """Decide ESP-side status changes, write the CRM, commit; then post-operations.

        Returns the changes as applied (only the lists whose status changed)."""
        with self._tx() as conn:
            keys = self.store.resolve(conn, [(self.esp.name, c.ids.get(self.esp.name), c.email)
                                             for c in changes])
            key_list = [k for k, _, _ in keys]
            snaps = self.store.snapshots(conn, key_list)
            crm_ids = self.store.record_ids(conn, self.crm.name, key_list)
            views = (self.store.fields_views(conn, key_list)
                     if any(c.fields for c in changes) else {})
        pendings: list[_Pending] = []
        origin_rows: list[dict[str, Any] | None] = []
        applied_subs: list[tuple[Change, dict[str, Subscription]]] = []
        for change, row, (key, _, _) in zip(changes, rows, keys, strict=True):
            where = (row or {}).get("snapshot", {}) or {}
            origin = ("post_operation" if change.source == "post_operation"
                      else f"esp:{self.esp.name}")
            fields: dict[str, str | None] = {}
            memberships: dict[str, str | None] = {}
            new_snaps: list[Snapshot] = []
            failed_snaps: list[Snapshot] = []
            journal: list[JournalEntry] = []
            applied: dict[str, Subscription] = {}
            for list_id, sub in change.subscriptions.items():
                mapping = self.mapper.by_list.get(list_id)
                if mapping is None:
                    self.failures.append(Failure(
                        "crm", change.email, list_id,
                        f"unknown ESP list id {list_id!r}: add a [[lists]] mapping with "
                        f"esp_list = \"{list_id}\" or ignore this list", where.get("where", "")))
                    continue
                snap = snaps.get((key, list_id))
                if snap is None and origin == "post_operation":
                    continue  # a cascade only reaches lists the contact is on
                at = sub.changed_at or change.occurred_at
                # Only the ESP's own date may win a consent conflict: an undated event (a
                # replay, a webhook with no [EventDate]) is never "newer" than an unsubscribe.
                decision = decide(snap.status if snap else None, snap.changed_at if snap else None,
                                  sub.status, sub.changed_at, explicit=sub.explicit,
                                  from_side="esp", policy=self.policy)
                # The CRM is behind what crmsync knows (an earlier write failed): write again.
                # Only a contact the CRM holds, on a list it can record, can be behind: an
                # ESP address the CRM never had stays recorded in the state store, once.
                target = self.mapper.to_crm(list_id, decision.status)
                behind = (not decision.apply and snap is not None
                          and decision.status == snap.status and snap.crm_status != snap.status
                          and target is not None
                          and (key in crm_ids or bool(change.ids.get(self.crm.name))))
                if not decision.apply and not behind:
                    if decision.why != "unchanged":
                        self.stats.consent_kept += 1
                    continue
                if behind:
                    assert snap is not None
                    at = snap.changed_at
                written = target is not None and (key in crm_ids or bool(change.ids.get(
                    self.crm.name)))
                if target is not None and written:
                    fields.update(target[0])
                    memberships.update(target[1])
                    self.stats.count(list_id, "crm", decision.status.value)
                elif target is None:
                    log.info("list %s has no CRM field or membership for %s; recorded in the "
                             "state store only", list_id, decision.status.value)
                groups = sub.groups or (snap.groups if snap else frozenset())
                new_snaps.append(Snapshot(
                    contact_key=key, list_id=list_id, status=decision.status, groups=groups,
                    crm_status=decision.status if written else (snap.crm_status if snap else None),
                    hash=status_hash(decision.status, groups), changed_at=at,
                    source=origin))
                failed_snaps.append(replace(new_snaps[-1], crm_status=snap.crm_status if snap
                                            else None))
                journal.append(JournalEntry(
                    contact_key=key, email=change.email, list_id=list_id,
                    old_status=(snap.crm_status if behind else snap.status).value  # type: ignore[union-attr]
                    if snap and (snap.crm_status if behind else snap.status) else None,
                    new_status=decision.status.value, applied_to="crm" if written else "state",
                    source=origin,
                    reason=("written again after an earlier failure" if behind
                            else sub.reason or change.reason), event_id=change.event_id,
                    run_id=self.stats.run_id, at=at))
                if not behind:
                    applied[list_id] = sub.model_copy(update={"status": decision.status})
                snaps[(key, list_id)] = new_snaps[-1]
            # A profile change at the ESP (mapped fields) goes to the CRM too, for a
            # contact the CRM is known to hold; the fields view is updated with it so the
            # CRM's next read does not echo the same values back to the ESP.
            mapped = self.mapper.fields.values()
            esp_fields = {name: value for name, value in change.fields.items()
                          if name in mapped}
            new_view: dict[str, str | None] | None = None
            if esp_fields and key in crm_ids and origin != "post_operation":
                fields.update(self.mapper.crm_fields(esp_fields))
                if key in views:
                    new_view = views[key] | esp_fields
            crm_change = None
            if fields or memberships:
                ids = {self.crm.name: crm_ids[key]} if key in crm_ids else dict(change.ids)
                crm_change = Change(email=change.email, ids=ids, fields=fields,
                                    memberships=memberships, source=f"esp:{self.esp.name}",
                                    reason=change.reason, occurred_at=change.occurred_at,
                                    event_id=change.event_id)
            pending = _Pending(crm_change or change, key, new_snaps, journal,
                               snapshots_if_failed=failed_snaps)
            if new_view is not None:
                pending.fields_view = new_view
                pending.fields_hash = content_hash(new_view)
            pending.outbox_id = row["id"] if row else None
            if new_snaps or row or crm_change is not None:
                pendings.append(pending)
                origin_rows.append(row)
            if applied:
                applied_subs.append((change, applied))
                pending.applied = (change, applied)
            if dry_run or crm_change is None:
                pending.change = Change(email=change.email)  # nothing to send to the CRM
        if dry_run:
            self._dry_follow_ups(applied_subs)
            return []
        to_write = [p for p in pendings if p.change.fields or p.change.memberships]
        results = self._write_crm([p.change for p in to_write])
        outcome = {id(p): r for p, r in zip(to_write, results, strict=True)}
        done_ids: list[int] = []
        commits: list[_Pending] = []
        with self._tx() as conn:
            for pending, row in zip(pendings, origin_rows, strict=True):
                result = outcome.get(id(pending))
                if result is None or result.ok:
                    commits.append(pending)
                    if row:
                        done_ids.append(row["id"])
                    if result is not None:
                        self.stats.crm_written += 1
                    continue
                self._write_failed(conn, pending, row, result, side="crm")
                # the ESP's word stands even though the CRM did not take it yet
                self.store.put_snapshots(conn, pending.snapshots_if_failed)
                self.store.append_journal(conn, [
                    replace(j, applied_to="state", reason=f"CRM write failed: {result.error}")
                    for j in pending.journal if j.old_status != j.new_status
                    and j.reason != "written again after an earlier failure"])
            self.store.put_snapshots(conn, [s for p in commits for s in p.snapshots])
            self.store.append_journal(conn, [j for p in commits for j in p.journal])
            self._record_fields(conn, [p for p in commits if outcome.get(id(p)) is not None])
            self.store.outbox_done(conn, done_ids)
            done = [change.model_copy(update={"subscriptions": subs})
                    for change, subs in (p.applied for p in commits if p.applied is not None)]
            # In the same transaction as the change itself: what must follow it. A crash
            # right after the commit cannot lose a cascade or the ESP's copy of one.
            queue = "esp" if follow_up else "postop"
            self.store.stage(conn, queue, [{"payload": c.model_dump(mode="json")} for c in done],
                             run_id=self.stats.run_id,
                             batch="followups" if follow_up else "postop")
        if not follow_up:
            self._run_post_operations()
        return done

    def _write_failed(self, conn: Connection, pending: _Pending, row: dict[str, Any] | None,
                      result: WriteResult, *, side: str) -> None:
        lists = ",".join(s.list_id for s in pending.snapshots)
        attempts = (row or {}).get("attempts", 0) + 1
        if row and result.retryable and attempts < self.max_attempts:
            from sqlalchemy import update

            from ..state import schema

            conn.execute(update(schema.outbox).where(schema.outbox.c.id == row["id"]).values(
                attempts=attempts, last_error=result.error))
            self.failures.append(Failure(side, pending.change.email, lists,
                                         f"{result.error} (will retry, attempt {attempts})",
                                         code=result.code or "", retryable=True))
            return
        if row and result.retryable:
            self.store.outbox_dead(conn, row, result.error or "failed")
        elif row:
            self.store.outbox_done(conn, [row["id"]], status="failed", error=result.error)
        self.failures.append(Failure(side, pending.change.email, lists,
                                     result.error or "failed", code=result.code or "",
                                     retryable=result.retryable and row is None))

    def _write_crm(self, changes: list[Change]) -> list[WriteResult]:
        return _write_all(self.crm, changes)

    def _run_post_operations(self) -> None:
        """Run the post-operations queued with the changes they follow (durably)."""
        while True:
            rows = self.store.pending("postop", limit=self.config.sync.batch_size)
            if not rows:
                return
            self._post_operations([Change.model_validate(row["payload"]) for row in rows])
            with self._tx() as conn:
                self.store.outbox_done(conn, [row["id"] for row in rows])

    def _post_operations(self, applied: list[Change]) -> None:
        follow_ups: list[Change] = []
        calls: list[tuple[Change, dict[str, Any]]] = []
        mode: Literal["batch", "realtime"] = (
            "realtime" if self.stats.mode == "realtime" else "batch")
        for change in applied:
            # a CRM record's own change was applied to the ESP; an ESP event's to the CRM
            context = PostOpContext(
                applied_to="esp" if change.source.startswith("crm:") else "crm", mode=mode,
                run_id=self.stats.run_id, all_lists=self.config.list_ids())
            follow_ups.extend(self.hooks.post_operation(change, context))
            calls.extend((change, call) for call in context.extra.get("calls", []))
        if calls:
            with self._tx() as conn:
                self.store.append_journal(conn, [JournalEntry(
                    contact_key="", email=change.email, list_id=call["list"], old_status=None,
                    new_status=change.subscriptions[call["list"]].status.value
                    if call["list"] in change.subscriptions else "unsubscribed",
                    applied_to="url", source="post_operation",
                    reason=f"call {call['url']}: {call.get('status') or call.get('error')}"
                           f"{'' if call['ok'] else ' (failed)'}",
                    run_id=self.stats.run_id) for change, call in calls])
            self.stats.post_operations += len(calls)
        if not follow_ups:
            return
        # applied, journaled and queued for the ESP (which did not make them) at once
        cascaded = self._inbound_decide(follow_ups, [None] * len(follow_ups), dry_run=False,
                                        follow_up=True)
        self.stats.post_operations += len(cascaded)

    def _dry_follow_ups(self, applied: list[tuple[Change, dict[str, Subscription]]]) -> None:
        for change, subs in applied:
            context = PostOpContext(applied_to="crm", mode="batch", run_id="dry-run",
                                    all_lists=self.config.list_ids(), extra={"dry_run": True})
            for follow in self.hooks.post_operation(
                    Change(email=change.email, subscriptions=subs, source=change.source),
                    context):
                for list_id, sub in follow.subscriptions.items():
                    self.stats.count(list_id, "crm", sub.status.value)
                    self.stats.count(list_id, "esp", sub.status.value)

    # -- outbound: CRM changes to the ESP -------------------------------------------------
    def _since(self, full: bool) -> Cursor | None:
        if full:
            return None
        cursor = self.store.get_cursor("crm")
        if cursor is None:
            return None
        return Cursor(at=cursor.at - timedelta(seconds=self.config.sync.overlap_s),
                      tie_id="", data=cursor.data)

    def _pages(self, full: bool) -> Iterator[tuple[list[_Pending], Cursor | None]]:
        since = self._since(full)
        pages = self.crm.read(since)
        if since is None:  # a full read must come back whole: see completeness.py
            pages = checked_full_read(self.crm, pages, self._forget_crm_cursor)
        try:
            yield from self._read_pages(pages)
        except IncompleteRead as exc:
            # What was read still goes out (the file is finished and committed, without
            # the cursor); the run fails once the outbound half is done.
            self._short_read = exc

    def _read_pages(self, pages: Iterable[Page]
                    ) -> Iterator[tuple[list[_Pending], Cursor | None]]:
        for number, page in enumerate(pages, 1):
            for rejected in page.rejected:  # an address that is no address: never sent
                self.failures.append(Failure(
                    "crm", rejected.address, "", f"not sent to the ESP: {rejected.reason}; "
                    f"correct the address in {self.crm.name}",
                    f"{self.crm.name} record {rejected.record_id}", code="invalid_address"))
            records = list(page.records)
            if self.hooks.has_transforms:
                records = [self.hooks.transform_contact(r, "crm_to_esp") for r in records]
            self.stats.crm_read += len(records)
            self.progress("crm read", len(records))
            yield self._outbound_page(records), page.cursor
            if number % 8 == 0:
                gc.collect()  # see _streaming_gc: keeps memory flat as contacts grow

    def _forget_crm_cursor(self) -> None:
        """A full read came up short: the next run reads everything again."""
        with self._tx() as conn:
            self.store.clear_cursor(conn, "crm")

    def _outbound_page(self, records: list[Contact]) -> list[_Pending]:
        # Erasure (`crmsync forget`, docs/operations.md): an erased address is never
        # planned, stored or sent again, until the person opts in anew at the ESP.
        from ..state.ledger import drop_suppressed  # the ledger's one engine hunk

        records = drop_suppressed(self.store, self.config, records, conn=self._dry_conn)
        # The same record may come twice (overlap window, a page boundary): last wins.
        unique: dict[tuple[str, str], Contact] = {}
        for record in records:
            unique[(record.ids.get(self.crm.name, ""), record.email)] = record
        # A deleted record is looked up, never resolved: its address may be a CRM's
        # stand-in (deletions reported by id only), which is no email change.
        gone_records = [r for r in unique.values() if r.deleted]
        records = [r for r in unique.values() if not r.deleted]
        with self._tx() as conn:
            hashes: dict[str, str | None] = {}
            deleted: set[str] = set()
            keys = self.store.resolve(conn, [(self.crm.name, r.ids.get(self.crm.name), r.email)
                                             for r in records], hashes=hashes, deleted=deleted)
            gone = self.store.known(conn, [(self.crm.name, r.ids.get(self.crm.name), r.email)
                                           for r in gone_records])
            gone_keys = [hit[0] for hit in gone if hit is not None]
            snaps = self.store.snapshots(conn, [k for k, created, _ in keys if not created]
                                         + gone_keys)
            esp_ids = self.store.record_ids(conn, self.esp.name, gone_keys)
        out: list[_Pending] = []
        for record, (key, _created, previous) in zip(records, keys, strict=True):
            pending = self._outbound_one(record, key, previous, snaps, hashes.get(key),
                                         deleted=key in deleted)
            if pending is None:
                self.stats.skipped_unchanged += 1
            else:
                out.append(pending)
        for record, hit in zip(gone_records, gone, strict=True):
            pending = None
            if hit is not None:
                # the person crmsync knows: their address and their ESP id
                key, email, sent = hit
                ids = dict(record.ids)
                if key in esp_ids:
                    ids[self.esp.name] = esp_ids[key]
                pending = self._outbound_delete(
                    record.model_copy(update={"email": email, "ids": ids}), key, snaps,
                    record.modified_at or datetime.now(UTC), already_sent=sent)
            if pending is None:
                self.stats.skipped_unchanged += 1
            else:
                out.append(pending)
        return out

    def _outbound_one(self, record: Contact, key: str, previous: str | None,
                      snaps: dict[tuple[str, str], Snapshot], old_hash: str | None, *,
                      deleted: bool = False) -> _Pending | None:
        """``deleted``: this contact's deletion already reached the ESP."""
        at = record.modified_at or datetime.now(UTC)
        source = f"crm:{self.crm.name}"
        subs: dict[str, Subscription] = {}
        new_snaps: list[Snapshot] = []
        journal: list[JournalEntry] = []
        desired = self.mapper.desired(record)
        for list_id, want in desired.items():
            snap = snaps.get((key, list_id))
            status = want.status
            explicit = False
            if snap is not None:
                if want.status == snap.crm_status:
                    status = snap.status  # the CRM did not change its mind: keep what we know
                else:
                    explicit = (snap.crm_status == Status.UNSUBSCRIBED
                                and want.status != Status.UNSUBSCRIBED)
                    # an undated CRM record never wins a consent conflict (see inbound)
                    decision = decide(snap.status, snap.changed_at, want.status,
                                      record.modified_at, explicit=explicit, from_side="crm",
                                      policy=self.policy)
                    if not decision.apply and decision.why != "unchanged":
                        self.stats.consent_kept += 1
                    status = decision.status
            if (status == Status.UNSUBSCRIBED and want.status != Status.UNSUBSCRIBED
                    and snap is not None and self.crm.name in record.ids):
                # crmsync knows of an unsubscribe the CRM does not show (an ESP unsubscribe
                # of a contact not yet read from the CRM, or a write-back that failed)
                self._repairs.append((record, key, list_id, want.status, snap))
            status_changed = snap is None or status != snap.status
            groups_changed = snap is None or want.groups != snap.groups
            crm_changed = snap is None or want.status != snap.crm_status
            if not (status_changed or groups_changed or crm_changed or previous):
                continue
            changed_at = at if status_changed else snap.changed_at  # type: ignore[union-attr]
            new_snaps.append(Snapshot(
                contact_key=key, list_id=list_id, status=status, groups=want.groups,
                crm_status=want.status, hash=status_hash(status, want.groups),
                changed_at=changed_at, source=source if status_changed else snap.source  # type: ignore[union-attr]
            ))
            if status_changed or groups_changed or previous:
                subs[list_id] = _subscription(
                    list_id=list_id, status=status, groups=want.groups, changed_at=changed_at,
                    source=source, explicit=explicit,
                    reason="opt-in in the CRM" if explicit else None)
                what = ("add" if snap is None else status.value if status_changed
                        else "update")
                self.stats.count(list_id, "esp", what)
            if status_changed:
                journal.append(JournalEntry(
                    contact_key=key, email=record.email, list_id=list_id,
                    old_status=snap.status.value if snap else None, new_status=status.value,
                    applied_to="esp", source=source, run_id=self.stats.run_id, at=at,
                    reason="explicit opt-in in the CRM" if explicit else None))
        fields = self.mapper.esp_fields(record)
        fields_hash = content_hash(fields)
        fields_changed = fields_hash != old_hash
        resend = self._resend
        if fields_changed and not subs and desired:
            # a field update travels with the contact's current lists
            for list_id in desired:
                snap = next((s for s in new_snaps if s.list_id == list_id),
                            snaps.get((key, list_id)))
                if snap is not None:
                    subs[list_id] = _subscription(list_id=list_id, status=snap.status,
                                                 groups=snap.groups, changed_at=snap.changed_at,
                                                 source=source)
                    self.stats.count(list_id, "esp", "update")
        elif resend and desired:
            # A resend sends the lists the contact is subscribed to. Not pending ones: a
            # batch run reads only unsubscriptions from the ESP, so crmsync cannot know
            # whether the person confirmed since, and re-sending "pending" would ask a
            # confirmed subscriber to confirm again. Unsubscribes go in one pass over
            # every one crmsync knows (_known_unsubscribes), CRM contact or not.
            for list_id in desired:
                snap = snaps.get((key, list_id))
                if list_id in subs or snap is None or snap.status != Status.SUBSCRIBED:
                    continue
                subs[list_id] = _subscription(list_id=list_id, status=snap.status,
                                             groups=snap.groups, changed_at=snap.changed_at,
                                             source=source)
                self.stats.count(list_id, "esp", "resend")
        if not subs and not fields_changed and not new_snaps and not previous:
            return None
        if not desired and not subs and not new_snaps and not previous:
            # on no list crmsync sends to: the ESP gets nobody's data it does not mail
            return None
        change = _change(email=record.email, ids=record.ids, previous_email=previous,
                        fields=fields if (fields_changed or previous or resend) else {},
                        subscriptions=subs, source=source, occurred_at=at)
        if not change.subscriptions and not change.fields:
            return _Pending(_change(email=record.email), key, new_snaps, journal, fields_hash,
                            fields)
        pending = _Pending(change, key, new_snaps, journal, fields_hash, fields)
        # A status change runs the post-operations; a contact's first appearance only
        # when it arrives unsubscribed (as an ESP-side one does), so that a first full
        # export does not queue one per contact nor call every on="subscribe" URL.
        changed = [e.list_id for e in journal
                   if e.old_status is not None or e.new_status == Status.UNSUBSCRIBED.value]
        if changed and self._post_operations_on:
            pending.post_operation = _change(
                email=record.email, ids=record.ids, source=source, occurred_at=at,
                subscriptions={list_id: subs[list_id] for list_id in changed})
        return pending

    def _membership_removals(self) -> Iterator[list[_Pending]]:
        """Each list fed by a CRM membership, reconciled with the CRM's members now: a
        contact the CRM had put on the list whose membership is gone is unsubscribed
        there (some CRMs remove a member without touching the person's record, so no
        incremental read shows it). Connectors that cannot list members are skipped."""
        for mapping in self.mapper.lists:
            key = mapping.membership_key
            members = None if key is None else self.crm.members(key)
            if members is None:
                continue
            current = set(members)
            after, holders = "", 0
            gone: list[tuple[Snapshot, str, str]] = []
            while rows := self.store.list_holders(mapping.esp_list, self.crm.name,
                                                  after=after, limit=1000):
                after = rows[-1][0].contact_key
                holders += len(rows)
                # a contact with several CRM records (duplicates) is a member while any is
                gone.extend((snap, email, min(record_ids)) for snap, email, record_ids in rows
                            if record_ids and record_ids.isdisjoint(current))
            share = self.config.sync.max_removal_share
            if gone and (not current or (len(gone) > 10 and len(gone) > share * holders)):
                # An empty or short answer from the CRM must not unsubscribe a whole list.
                self.failures.append(Failure(
                    "crm", "", mapping.esp_list,
                    f"{self.crm.name} lists {len(current)} member(s) of {key}, so {len(gone)} "
                    f"of the {holders} people crmsync holds on list {mapping.esp_list} would "
                    "be unsubscribed: not applied. If the CRM really removed them, set "
                    "[sync] max_removal_share = 1.0 for one run; otherwise check the CRM",
                    code="mass_removal_refused"))
                continue
            size = self.config.sync.batch_size
            for start in range(0, len(gone), size):
                yield [self._removal(snap, email, record_id, str(key))
                       for snap, email, record_id in gone[start:start + size]]

    def _removal(self, snap: Snapshot, email: str, record_id: str, key: str) -> _Pending:
        at = datetime.now(UTC)
        source = f"crm:{self.crm.name}"
        reason = f"removed from {key} in the CRM"
        list_id = snap.list_id
        change = _change(email=email, ids={self.crm.name: record_id}, source=source,
                         reason=reason, occurred_at=at, subscriptions={list_id: _subscription(
                             list_id=list_id, status=Status.UNSUBSCRIBED, groups=snap.groups,
                             changed_at=at, source=source, reason=reason)})
        self.stats.count(list_id, "esp", "unsubscribed")
        pending = _Pending(change, snap.contact_key, [replace(
            snap, status=Status.UNSUBSCRIBED, crm_status=Status.UNSUBSCRIBED,
            hash=status_hash(Status.UNSUBSCRIBED, snap.groups), changed_at=at, source=source)],
            [JournalEntry(contact_key=snap.contact_key, email=email, list_id=list_id,
                          old_status=snap.status.value, new_status=Status.UNSUBSCRIBED.value,
                          applied_to="esp", source=source, reason=reason,
                          run_id=self.stats.run_id, at=at)])
        if self._post_operations_on:
            pending.post_operation = change
        return pending

    def _known_unsubscribes(self) -> Iterator[Change]:
        """A resend's last pass: every unsubscribe crmsync knows (from the ESP, the CRM,
        a cascade, a deletion), one change per contact, for the configured lists, so an
        ESP restored from an old backup ends with none of them lost."""
        after = ("", "")
        key: str | None = None
        email = ""
        subs: dict[str, Subscription] = {}
        while True:
            rows = self.store.unsubscribed_snapshots(after=after, limit=1000)
            if not rows:
                break
            for row_key, list_id, groups, row_email in rows:
                if row_key != key and subs:
                    yield _change(email=email, subscriptions=subs, source="crmsync:resend")
                    subs = {}
                key, email = row_key, row_email
                if list_id in self.mapper.by_list:
                    subs[list_id] = _subscription(list_id=list_id, status=Status.UNSUBSCRIBED,
                                                 groups=groups, source="crmsync:resend")
                    self.stats.count(list_id, "esp", "resend")
            after = (rows[-1][0], rows[-1][1])
        if subs:
            yield _change(email=email, subscriptions=subs, source="crmsync:resend")

    def _outbound_delete(self, record: Contact, key: str,
                         snaps: dict[tuple[str, str], Snapshot], at: datetime, *,
                         already_sent: bool = False) -> _Pending | None:
        policy = self.config.consent.deletes
        known = [s for (k, _), s in snaps.items() if k == key]
        if policy == "ignore" or not known or (policy == "delete" and already_sent):
            return None  # nothing known, or its deletion already reached the ESP
        source = f"crm:{self.crm.name}"
        if policy == "delete":
            journal = [JournalEntry(contact_key=key, email=record.email, list_id=s.list_id,
                                    old_status=s.status.value, new_status="deleted",
                                    applied_to="esp", source=source, reason="deleted in the CRM",
                                    run_id=self.stats.run_id, at=at) for s in known]
            for s in known:
                self.stats.count(s.list_id, "esp", "delete")
            gone = [Snapshot(contact_key=key, list_id=s.list_id, status=Status.UNSUBSCRIBED,
                             groups=frozenset(), crm_status=Status.UNSUBSCRIBED,
                             hash=status_hash(Status.UNSUBSCRIBED, frozenset()), changed_at=at,
                             source=source) for s in known]
            return _Pending(Change(email=record.email, ids=record.ids, op=Op.DELETE,
                                   source=source, reason="deleted in the CRM", occurred_at=at),
                            key, gone, journal)
        subs: dict[str, Subscription] = {}
        new_snaps = []
        journal = []
        for s in known:
            if s.status == Status.UNSUBSCRIBED:
                continue
            subs[s.list_id] = Subscription(list_id=s.list_id, status=Status.UNSUBSCRIBED,
                                           groups=s.groups, changed_at=at, source=source,
                                           reason="deleted in the CRM")
            new_snaps.append(Snapshot(contact_key=key, list_id=s.list_id,
                                      status=Status.UNSUBSCRIBED, groups=s.groups,
                                      crm_status=Status.UNSUBSCRIBED,
                                      hash=status_hash(Status.UNSUBSCRIBED, s.groups),
                                      changed_at=at, source=source))
            journal.append(JournalEntry(contact_key=key, email=record.email, list_id=s.list_id,
                                        old_status=s.status.value, new_status="unsubscribed",
                                        applied_to="esp", source=source,
                                        reason="deleted in the CRM", run_id=self.stats.run_id,
                                        at=at))
            self.stats.count(s.list_id, "esp", "unsubscribed")
        if not subs:
            return None
        return _Pending(Change(email=record.email, ids=record.ids, subscriptions=subs,
                               source=source, reason="deleted in the CRM", occurred_at=at),
                        key, new_snaps, journal)

    def _flush_crm_repairs(self, *, dry_run: bool = False) -> None:
        """Write to the CRM the unsubscribes it does not show yet; journal each once."""
        repairs, self._repairs = self._repairs, []
        by_contact: dict[str, list[tuple[Contact, str, str, Status, Snapshot]]] = {}
        for item in repairs:
            if self.mapper.to_crm(item[2], Status.UNSUBSCRIBED) is not None:
                by_contact.setdefault(item[1], []).append(item)
        if dry_run:
            for items in by_contact.values():
                for _, _, list_id, _, _ in items:
                    self.stats.count(list_id, "crm", "unsubscribed")
            return
        groups = list(by_contact.values())
        size = self.config.sync.batch_size
        for start in range(0, len(groups), size):
            chunk = groups[start:start + size]
            changes = []
            for items in chunk:
                record = items[0][0]
                fields: dict[str, str | None] = {}
                memberships: dict[str, str | None] = {}
                for _, _, list_id, _, _ in items:
                    target = self.mapper.to_crm(list_id, Status.UNSUBSCRIBED)
                    assert target is not None
                    fields.update(target[0])
                    memberships.update(target[1])
                changes.append(Change(email=record.email,
                                      ids={self.crm.name: record.ids[self.crm.name]},
                                      fields=fields, memberships=memberships,
                                      source="crmsync", reason="the CRM was behind"))
            results = self._write_crm(changes)
            with self._tx() as conn:
                for items, change, result in zip(chunk, changes, results, strict=True):
                    if not result.ok:
                        self.failures.append(Failure(
                            "crm", change.email, ",".join(i[2] for i in items),
                            f"{result.error} (an earlier unsubscribe; retried next run)",
                            code=result.code or "", retryable=result.retryable))
                        continue
                    self.stats.crm_written += 1
                    self.store.put_snapshots(conn, [replace(
                        snap, crm_status=Status.UNSUBSCRIBED, status=Status.UNSUBSCRIBED)
                        for _, _, _, _, snap in items])
                    self.store.append_journal(conn, [JournalEntry(
                        contact_key=key, email=record.email, list_id=list_id,
                        old_status=crm_view.value, new_status=Status.UNSUBSCRIBED.value,
                        applied_to="crm", source=snap.source or "crmsync",
                        reason="the CRM did not show an earlier unsubscribe",
                        run_id=self.stats.run_id) for record, key, list_id, crm_view, snap
                        in items])
                    for _, _, list_id, _, _ in items:
                        self.stats.count(list_id, "crm", "unsubscribed")

    def _outbound(self, *, full: bool, dry_run: bool) -> None:
        if dry_run:
            for _pendings, _cursor in self._pages(full):
                pass
            collections.deque(self._membership_removals(), maxlen=0)  # counts the plan
            if self._resend:
                collections.deque(self._known_unsubscribes(), maxlen=0)  # counts the plan
            self._flush_crm_repairs(dry_run=True)
            for row in self.store.pending("esp", batch="followups", limit=1_000_000):
                change = Change.model_validate(row["payload"])
                for list_id, sub in change.subscriptions.items():
                    self.stats.count(list_id, "esp", sub.status.value)
            self._raise_short_read()
            return
        if self.file_mode:
            self._outbound_file(full)
        else:
            self._outbound_api(full)
        self._flush_crm_repairs()
        # What follows the CRM's own status changes (a cascade: CRM written now, the ESP
        # in this same run: through the API, or in a small second import file).
        self._run_post_operations()
        if not self.file_mode:
            self._flush_followups_api()
        elif self.store.pending("esp", batch="followups", limit=1):
            self._outbound_file(full, followups_only=True)
        self._raise_short_read()

    def _raise_short_read(self) -> None:
        if self._short_read is not None:
            raise self._short_read

    def _sendable(self, pending: _Pending) -> bool:
        return bool(pending.change.subscriptions or pending.change.fields
                    or pending.change.op == Op.DELETE)

    def _send_and_commit(self, chunk: Sequence[_Pending]) -> int:
        """Write a chunk through the ESP API; commit what it acknowledged. Returns how
        many changes were sent."""
        sendable = [p for p in chunk if self._sendable(p)]
        results = self._write_esp([p.change for p in sendable])
        outcome = {id(p): r for p, r in zip(sendable, results, strict=True)}
        with self._tx() as conn:
            commits = []
            for pending in chunk:
                result = outcome.get(id(pending))
                if result is not None and not result.ok:
                    self._write_failed(conn, pending, None, result, side="esp")
                    continue
                if result is not None:
                    self.stats.esp_written += 1
                commits.append(pending)
            self._commit_pendings(conn, commits)
        return len(sendable)

    # API mode: write in batches, commit each acknowledged batch, cursor per page.
    def _outbound_api(self, full: bool) -> None:
        self._flush_followups_api()
        size = self.config.sync.batch_size
        for pendings, cursor in self._pages(full):
            for start in range(0, len(pendings), size):
                sent = self._send_and_commit(pendings[start:start + size])
                self.progress("esp written", sent)
            if cursor is not None:
                with self._tx() as conn:
                    self.store.set_cursor(conn, "crm", cursor)
        for removed in self._membership_removals():
            self.progress("esp written", self._send_and_commit(removed))
        if self._resend:
            unsubscribes = self._known_unsubscribes()
            while changes := list(itertools.islice(unsubscribes, size)):
                for change, result in zip(changes, self._write_esp(changes), strict=True):
                    if result.ok:
                        self.stats.esp_written += 1
                    else:
                        self.failures.append(Failure(
                            "esp", change.email, ",".join(change.subscriptions),
                            f"{result.error} (a resent unsubscribe; run --resend again)",
                            code=result.code or "", retryable=result.retryable))

    def _flush_followups_api(self) -> None:
        while True:
            rows = self.store.pending("esp", batch="followups",
                                      limit=self.config.sync.batch_size)
            if not rows:
                return
            changes = [Change.model_validate(row["payload"]) for row in rows]
            results = self._write_esp(changes)
            with self._tx() as conn:
                for row, change, result in zip(rows, changes, results, strict=True):
                    if result.ok:
                        self.stats.esp_written += 1
                        self.store.outbox_done(conn, [row["id"]])
                    else:
                        self._write_failed(conn, _Pending(change, "", [], []), row, result,
                                           side="esp")
            if any(not r.ok and r.retryable for r in results):
                return

    def _write_esp(self, changes: list[Change]) -> list[WriteResult]:
        return _write_all(self.esp, changes)

    def _commit_pendings(self, conn: Connection, commits: Iterable[_Pending]) -> None:
        """Commit acknowledged changes: the same rows a commit spool holds."""
        db_time = self.store.db_time
        self._commit_rows(conn, ((row[0], row[1:]) for pending in commits
                                 for row in pending.spool_rows(db_time)))

    def _commit_rows(self, conn: Connection,
                     tagged: Iterable[tuple[str, tuple[Any, ...]]]) -> None:
        """Execute tagged rows (see :meth:`_Pending.spool_rows`), a few thousand at a
        time: snapshots, journal entries, fields hashes, deletions."""
        rows: dict[str, list[tuple[Any, ...]]] = {"s": [], "j": [], "f": [], "d": [], "p": []}

        def flush() -> None:
            self.store.put_snapshot_rows(conn, rows["s"])
            self.store.append_journal_rows(conn, rows["j"])
            self.store.set_fields_rows(conn, rows["f"])
            self.store.mark_deleted(conn, [key for (key,) in rows["d"]])
            self.store.stage(conn, "postop", [{"payload": json.loads(payload)}
                                              for (payload,) in rows["p"]],
                             run_id=self.stats.run_id, batch="postop")
            for bucket in rows.values():
                bucket.clear()

        for count, (tag, row) in enumerate(tagged, 1):
            rows[tag].append(row)
            if count % 5000 == 0:
                flush()
        flush()

    def _record_fields(self, conn: Connection, commits: Sequence[_Pending]) -> None:
        self.store.set_fields_hashes(
            conn, {p.key: p.fields_hash for p in commits if p.fields_hash is not None},
            {p.key: p.fields_view for p in commits if p.fields_view is not None})

    # File mode: stream the import file, stage the commit, upload, then commit.
    def _outbound_file(self, full: bool, *, followups_only: bool = False) -> None:
        assert isinstance(self.esp, FileExchange)
        name = self.esp.import_file_name(
            f"{self.stats.run_id}.followups" if followups_only else self.stats.run_id)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        spool = self.spool_dir / name
        with self._tx() as conn:
            self.store.set_file(conn, name, direction="out", run_id=self.stats.run_id,
                                status="writing")
        last_cursor: list[Cursor | None] = [None]
        followup_ids: list[int] = []
        sent = [0]

        # What to commit once the file is up is spooled beside it as CSV rows in the
        # state store's raw form: a local append is far cheaper than a row in the
        # state store, and the files table says how far the export got.
        commit_file = self._commit_file(name)

        def changes(commit_rows: Any) -> Iterator[Change]:
            for row in self.store.pending("esp", batch="followups", limit=1_000_000):
                followup_ids.append(row["id"])
                sent[0] += 1
                yield Change.model_validate(row["payload"])
            if followups_only:
                return
            db_time = self.store.db_time
            for pendings, cursor in self._pages(full):
                for pending in pendings:
                    commit_rows.writerows(pending.spool_rows(db_time))
                if cursor is not None:
                    last_cursor[0] = cursor
                for pending in pendings:
                    if self._sendable(pending):
                        sent[0] += 1
                        yield pending.change
            for removed in self._membership_removals():
                for pending in removed:
                    commit_rows.writerows(pending.spool_rows(db_time))
                    sent[0] += 1
                    yield pending.change
            if self._resend:
                for change in self._known_unsubscribes():
                    sent[0] += 1
                    yield change

        hasher = hashlib.sha256()
        with (spool.open("wb") as raw,
              commit_file.open("w", encoding="utf-8", newline="") as commits):
            commit_rows = csv.writer(commits)
            writer = _HashingWriter(raw, hasher)
            rows = self.esp.write_import_file(writer, changes(commit_rows))  # type: ignore[arg-type]
            commits.flush()
            os.fsync(commits.fileno())
            raw.flush()
            os.fsync(raw.fileno())
        info: dict[str, Any] = {
            "cursor": last_cursor[0].model_dump(mode="json") if last_cursor[0] else None,
            "followups": followup_ids, "changes": sent[0]}
        if sent[0] == 0:
            spool.unlink()
            with self._tx() as conn:
                self.store.set_file(conn, name, direction="out", run_id=self.stats.run_id,
                                    status="staged", rows=0, info=info)
            self._commit_export(name, None if self._short_read else last_cursor[0],
                                followup_ids)
            return
        with self._tx() as conn:
            self.store.set_file(conn, name, direction="out", run_id=self.stats.run_id,
                                status="staged", rows=rows, sha256=hasher.hexdigest(), info=info)
        self._upload(name, spool, rows, hasher.hexdigest(), self.stats.run_id, info)
        self._commit_export(name, None if self._short_read else last_cursor[0],
                                followup_ids)
        self.stats.esp_written += sent[0]

    def _upload(self, name: str, spool: Path, rows: int, sha256: str, run_id: str,
                info: dict[str, Any]) -> None:
        assert self.files is not None
        final = self.files.upload(spool, self.config.files.import_dir, name,
                                  Manifest(file=name + (".zip" if self.config.files.zip else ""),
                                           rows=rows, sha256=sha256, run_id=run_id),
                                  zip_it=self.config.files.zip)
        with self._tx() as conn:
            self.store.set_file(conn, name, direction="out", run_id=run_id, status="uploaded",
                                rows=rows, sha256=sha256, info=info)
        self.stats.files_uploaded.append(final)
        with contextlib.suppress(FileNotFoundError):
            spool.unlink()
            spool.with_suffix(spool.suffix + ".zip").unlink()

    def _commit_file(self, name: str) -> Path:
        path = self.spool_dir / f"{name}.commit.csv"
        legacy = self.spool_dir / f"{name}.commit.jsonl"  # written by an earlier crmsync
        return legacy if legacy.exists() and not path.exists() else path

    def _commit_export(self, name: str, cursor: Cursor | None, followup_ids: list[int]) -> None:
        commit_file = self._commit_file(name)
        if not commit_file.exists():
            log.warning("the commit spool of %s is gone: its contacts will be diffed and sent "
                        "again by the next run", name)
            cursor = None
        with self._tx() as conn:
            if commit_file.exists():
                self._commit_spool(conn, commit_file)
            self.store.outbox_done(conn, followup_ids)
            if cursor is not None:
                self.store.set_cursor(conn, "crm", cursor)
            record = self.store.file(name)
            self.store.set_file(conn, name, direction="out", run_id=self.stats.run_id,
                                status="committed", rows=record["rows"] if record else 0,
                                sha256=record["sha256"] if record else "",
                                info=record["info"] if record else {})
        with contextlib.suppress(FileNotFoundError):
            commit_file.unlink()

    def _commit_spool(self, conn: Connection, commit_file: Path) -> None:
        """Execute the rows of a commit spool, a few thousand at a time.

        A spool that cannot be read (a damaged disk) is a clear error: it would stop
        every run at recovery, before the ESP's unsubscriptions are read.
        """
        allow_large_csv_fields()  # a contact's mapped fields are one JSON cell
        try:
            self._commit_spool_rows(conn, commit_file)
        except (csv.Error, ValueError, KeyError, IndexError, UnicodeDecodeError) as exc:
            raise StateError(
                f"the commit spool {commit_file} is unreadable ({type(exc).__name__}: {exc}). "
                f"Its import file was uploaded; delete the spool and the next run diffs "
                f"those contacts again and re-sends them (an import is an idempotent "
                f"upsert)") from None

    def _commit_spool_rows(self, conn: Connection, commit_file: Path) -> None:
        with commit_file.open(encoding="utf-8", newline="") as lines:
            if commit_file.suffix == ".jsonl":
                spooled: Iterator[list[str]] = (
                    list(row) for line in lines for row in _legacy_spool_rows(
                        json.loads(line), self.store.db_time))
            else:
                spooled = csv.reader(lines)
            self._commit_rows(conn, map(_from_spool, spooled))

    # -- the report -----------------------------------------------------------------------
    def _write_report(self, run_id: str) -> Path:
        folder = self.config.path(self.config.sync.report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"failed-{run_id}.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["side", "email", "list", "code", "reason", "where"])
            for failure in self.failures:
                writer.writerow([failure.side, failure.email, failure.list_id, failure.code,
                                 failure.reason, failure.where])
        return path


def _write_all(connector: Connector, changes: list[Change]) -> list[WriteResult]:
    """``connector.write``, with a whole-batch vendor error turned into one failed result
    per change (kept retryable, with the vendor's Retry-After when it gave one)."""
    if not changes:
        return []
    try:
        return connector.write(changes)
    except (AuthError, QuotaExhausted):
        raise
    except RemoteError as exc:
        after = exc.retry_after if isinstance(exc, RateLimited) else None
        return [WriteResult(ok=False, error=str(exc), code=exc.code, retryable=exc.retryable,
                            retry_after=after) for _ in changes]


class _HashingWriter:
    """A binary file wrapper that hashes what goes through it."""

    def __init__(self, raw: Any, hasher: Any) -> None:
        self._raw = raw
        self._hasher = hasher

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        return int(self._raw.write(data))

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)

    def close(self) -> None:
        """The caller closes the underlying file."""

