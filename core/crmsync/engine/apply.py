"""Apply: send planned decisions to the receiving side, commit what it acknowledged.

:class:`Pipeline` is what both drivers (the batch run, the real-time worker) drive:

- it reads the snapshots a page of contacts needs and calls the pure functions of
  :mod:`crmsync.engine.plan` (**plan**);
- it sends each decision's change through a sink — the ESP's or the CRM's API in
  batches (:func:`write_all`), or, for a batch export in file mode, the import file
  the driver streams — (**apply**);
- it hands the acknowledged decisions to the state store's unit of work
  (:meth:`StateStore.commit`), the only way state changes (**commit**).

A dry run plans and counts, and writes nothing anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy import Connection

from ..config import Config
from ..contract import Connector, FileExchange
from ..errors import AuthError, QuotaExhausted, RateLimited, RemoteError
from ..files import FileSpace, Manifest
from ..hooks import Hooks, PostOpContext
from ..model import Change, Contact, Cursor, Status, WriteResult
from ..state import FileStatus, JournalEntry, Snapshot, StateStore, StateUpdate
from ..state.spool import SPOOL_SUFFIX
from ..state.store import Spool
from .mapping import ListMapper
from .plan import (
    ContactDecision,
    Failure,
    Plan,
    Rules,
    plan_crm_deletion,
    plan_crm_record,
    plan_esp_change,
    plan_removal,
    plan_repairs,
    repaired,
    resend_unsubscribes,
)

__all__ = ["Export", "ImportFileSink", "Pipeline", "RunStats", "write_all"]

log = logging.getLogger(__name__)

Observer = Callable[[str, ContactDecision], None]


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


def write_all(connector: Connector, changes: Sequence[Change]) -> list[WriteResult]:
    """``connector.write``, with a whole-batch vendor error turned into one failed result
    per change (kept retryable, with the vendor's Retry-After when it gave one)."""
    if not changes:
        return []
    try:
        return connector.write(list(changes))
    except (AuthError, QuotaExhausted):
        raise
    except RemoteError as exc:
        after = exc.retry_after if isinstance(exc, RateLimited) else None
        return [WriteResult(ok=False, error=str(exc), code=exc.code, retryable=exc.retryable,
                            retry_after=after) for _ in changes]


@dataclass
class Export:
    """One import file being written: the driver's change stream adds each decision's
    state update to ``spool`` and records the CRM ``cursor`` the file reaches and the
    queued follow-ups (``followup_ids``) it carries; ``sent`` counts the changes."""

    spool: Spool
    cursor: Cursor | None = None
    followup_ids: list[int] = field(default_factory=list)
    sent: int = 0


class ImportFileSink:
    """The file sink: an import file streamed with its commit spool, uploaded with its
    manifest, then committed — and recovery of a file a killed run left behind.

    The files table says how far each file got (``writing`` → ``staged`` → ``uploaded``
    → ``committed``); the spool folder holds the file and its commit spool until then.
    """

    def __init__(self, config: Config, esp: FileExchange, files: FileSpace,
                 store: StateStore, stats: RunStats, spool_dir: Path) -> None:
        self.config = config
        self.esp = esp
        self.files = files
        self.store = store
        self.stats = stats
        self.spool_dir = spool_dir

    def export(self, name: str, stream: Callable[[Export], Iterator[Change]]) -> None:
        """Write ``name`` from ``stream``'s changes, upload it, commit what it carries."""
        run_id = self.stats.run_id
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        path = self.spool_dir / name
        with self.store.begin() as conn:
            self.store.set_file(conn, name, direction="out", run_id=run_id,
                                status=FileStatus.WRITING)
        export = Export(self.store.spool(self.commit_path(name)))
        hasher = hashlib.sha256()
        try:
            with path.open("wb") as raw:
                rows = self.esp.write_import_file(
                    _HashingWriter(raw, hasher), stream(export))  # type: ignore[arg-type]
                raw.flush()
                os.fsync(raw.fileno())
        finally:
            export.spool.close()  # durable before the file can be uploaded
        info: dict[str, Any] = {
            "cursor": export.cursor.model_dump(mode="json") if export.cursor else None,
            "followups": export.followup_ids, "changes": export.sent}
        if export.sent == 0:
            path.unlink()
            with self.store.begin() as conn:
                self.store.set_file(conn, name, direction="out", run_id=run_id,
                                    status=FileStatus.STAGED, rows=0, info=info)
            self.commit(name, export.cursor, export.followup_ids)
            return
        with self.store.begin() as conn:
            self.store.set_file(conn, name, direction="out", run_id=run_id,
                                status=FileStatus.STAGED, rows=rows, sha256=hasher.hexdigest(),
                                info=info)
        self.upload(name, path, rows, hasher.hexdigest(), run_id, info)
        self.commit(name, export.cursor, export.followup_ids)
        self.stats.esp_written += export.sent

    def recover(self) -> None:
        """Finish what a killed run left: a half-written file is abandoned; a staged one
        is uploaded; an uploaded one is committed."""
        for record in self.store.files_in("out", [FileStatus.WRITING]):
            self._abandon(record)
        for record in self.store.files_in("out", [FileStatus.STAGED, FileStatus.UPLOADED]):
            name = record["name"]
            if record["status"] == FileStatus.STAGED:
                spool = self.spool_dir / name
                if not spool.exists() or not self.commit_path(name).exists():
                    self._abandon(record)
                    continue
                self.upload(name, spool, record["rows"], record["sha256"], record["run_id"],
                            record["info"])
            cursor = record["info"].get("cursor")
            self.commit(name, Cursor.model_validate(cursor) if cursor else None,
                        record["info"].get("followups", []))
            self.stats.recovered += 1

    def _abandon(self, record: dict[str, Any]) -> None:
        name = record["name"]
        with self.store.begin() as conn:
            self.store.drop_batch(conn, name)
            self.store.set_file(conn, name, direction="out", run_id=record["run_id"],
                                status=FileStatus.ABANDONED)
        for path in (self.spool_dir / name, self.commit_path(name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def upload(self, name: str, spool: Path, rows: int, sha256: str, run_id: str,
               info: dict[str, Any]) -> None:
        """The import file, then its manifest, up to the file space atomically."""
        zip_it = self.config.files.zip
        final = self.files.upload(spool, self.config.files.import_dir, name, Manifest(
            file=name + (".zip" if zip_it else ""), rows=rows, sha256=sha256, run_id=run_id),
            zip_it=zip_it)
        with self.store.begin() as conn:
            self.store.set_file(conn, name, direction="out", run_id=run_id,
                                status=FileStatus.UPLOADED, rows=rows, sha256=sha256, info=info)
        self.stats.files_uploaded.append(final)
        with contextlib.suppress(FileNotFoundError):
            spool.unlink()
            spool.with_suffix(spool.suffix + ".zip").unlink()

    def commit_path(self, name: str) -> Path:
        return self.spool_dir / f"{name}{SPOOL_SUFFIX}"

    def commit(self, name: str, cursor: Cursor | None, followup_ids: list[int]) -> None:
        """Commit an uploaded file: its spool, its follow-ups, the cursor it reached."""
        commit_path = self.commit_path(name)
        if not commit_path.exists():
            log.warning("the commit spool of %s is gone: its contacts will be diffed and sent "
                        "again by the next run", name)
            cursor = None
        with self.store.begin() as conn:
            if commit_path.exists():
                self.store.commit_spool(conn, commit_path, run_id=self.stats.run_id)
            self.store.outbox_done(conn, followup_ids)
            if cursor is not None:
                self.store.set_cursor(conn, "crm", cursor)
            record = self.store.file(name)
            self.store.set_file(conn, name, direction="out", run_id=self.stats.run_id,
                                status=FileStatus.COMMITTED, rows=record["rows"] if record else 0,
                                sha256=record["sha256"] if record else "",
                                info=record["info"] if record else {})
        with contextlib.suppress(FileNotFoundError):
            commit_path.unlink()


class _HashingWriter:
    """A binary file wrapper that hashes what goes through it."""

    def __init__(self, raw: BinaryIO, hasher: Any) -> None:
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


class Pipeline:
    """Plan → apply → commit between one CRM and one ESP, for either driver."""

    def __init__(self, config: Config, crm: Connector, esp: Connector, store: StateStore, *,
                 hooks: Hooks | None = None, stats: RunStats | None = None,
                 dry_run: bool = False, max_attempts: int = 5,
                 observer: Observer | None = None) -> None:
        self.config = config
        self.crm = crm
        self.esp = esp
        self.store = store
        self.hooks = hooks or Hooks()
        self.stats = stats or RunStats()
        self.dry_run = dry_run
        self.max_attempts = max_attempts
        self.observer = observer
        self.mapper = ListMapper(config)
        self.failures: list[Failure] = []
        self.repairs: list[Any] = []
        self.size = config.sync.batch_size
        self.only_lists: frozenset[str] | None = None  # sync --list
        # PostgreSQL with concurrent writers (a batch run beside `crmsync worker`s): hold
        # each contact's lock from its decision to its commit (StateStore.contact_locks)
        self.lock_contacts = False
        # ... and make each decision one transaction with those locks (a real-time event)
        self.one_transaction = False
        # Without post-operation hooks an application stages nothing to follow it; what
        # is still queued from before (hooks since removed, a crash) is run when this
        # is true (the real-time worker sets it once in a while, not for every event)
        self.leftovers = True

    @property
    def follows(self) -> bool:
        """Whether to look for post-operations and follow-ups to run after applying."""
        return self.hooks.has_post_operations or self.leftovers

    def contacts_locked(self, emails: Iterable[str]) -> contextlib.AbstractContextManager[None]:
        """The contacts' locks when :attr:`lock_contacts`, else nothing."""
        if not self.lock_contacts:
            return contextlib.nullcontext()
        return self.store.contact_locks(emails, one_transaction=self.one_transaction)

    @property
    def rules(self) -> Rules:
        return Rules(mapper=self.mapper, policy=self.config.consent.resubscribe,
                     deletes=self.config.consent.deletes, crm=self.crm.name,
                     esp=self.esp.name, run_id=self.stats.run_id, resend=self.stats.resend,
                     post_operations=self.hooks.has_post_operations,
                     only_lists=self.only_lists)

    @property
    def mode(self) -> Literal["batch", "realtime"]:
        return "realtime" if self.stats.mode == "realtime" else "batch"

    def absorb(self, plan: Plan, side: str) -> Plan:
        """Take a plan's counts, failures and repairs into the run's report."""
        stats = self.stats
        for list_id, sides in plan.counts.items():
            for name, counts in sides.items():
                for what, n in counts.items():
                    stats.count(list_id, name, what, n)
        stats.consent_kept += plan.consent_kept
        stats.skipped_unchanged += plan.unchanged
        self.failures.extend(plan.failures)
        self.repairs.extend(plan.repairs)
        if self.observer is not None:
            for decision in plan.decisions:
                self.observer(side, decision)
        return plan

    # -- plan ---------------------------------------------------------------------------
    def plan_crm_page(self, records: Sequence[Contact]) -> Plan:
        """Decide a page of CRM records (a deleted one by what crmsync holds of it)."""
        crm = self.crm.name
        # Erasure (`crmsync forget`, docs/operations.md): an erased address is never
        # planned, stored or sent again, until the person opts in anew at the ESP.
        from ..state.ledger import drop_suppressed

        records = drop_suppressed(self.store, self.config, list(records))
        # The same record may come twice (overlap window, a page boundary): last wins.
        unique: dict[tuple[str, str], Contact] = {}
        for record in records:
            unique[(record.ids.get(crm, ""), record.email)] = record
        # A deleted record is looked up, never resolved: its address may be a CRM's
        # stand-in (deletions reported by id only), which is no email change.
        gone_records = [r for r in unique.values() if r.deleted]
        live = [r for r in unique.values() if not r.deleted]
        with self.store.begin() as conn:
            hashes: dict[str, str | None] = {}
            deleted: set[str] = set()
            keys = self.store.resolve(conn, [(crm, r.ids.get(crm), r.email) for r in live],
                                      hashes=hashes, deleted=deleted, create=not self.dry_run,
                                      move=self.only_lists is None)
            gone = (self.store.known(conn, [(crm, r.ids.get(crm), r.email)
                                            for r in gone_records]) if gone_records else [])
            gone_keys = [hit[0] for hit in gone if hit is not None]
            snaps = self.store.snapshots(conn, [k for k, created, _ in keys if not created]
                                         + gone_keys)
            esp_ids = self.store.record_ids(conn, self.esp.name, gone_keys)
        rules = self.rules
        plan = Plan()
        for record, (key, _created, previous) in zip(live, keys, strict=True):
            plan_crm_record(rules, plan, record, key, previous, snaps, hashes.get(key))
        for record, hit in zip(gone_records, gone, strict=True):
            if hit is None:
                plan.unchanged += 1
                continue
            key, email, sent = hit  # the person crmsync knows: their address and ESP id
            ids = dict(record.ids)
            if key in esp_ids:
                ids[self.esp.name] = esp_ids[key]
            plan_crm_deletion(rules, plan, record.model_copy(update={"email": email, "ids": ids}),
                              key, snaps, already_sent=sent)
        return self.absorb(plan, "esp")

    def plan_esp_changes(self, changes: Sequence[Change],
                         origins: Sequence[dict[str, Any] | None]) -> Plan:
        """Decide ESP-side changes (unsubscriptions, webhook events, cascades)."""
        with self.store.begin() as conn:
            keys = self.store.resolve(conn, [(self.esp.name, c.ids.get(self.esp.name), c.email)
                                             for c in changes], create=not self.dry_run)
            key_list = [k for k, _, _ in keys]
            snaps = self.store.snapshots(conn, key_list)
            crm_ids = self.store.record_ids(conn, self.crm.name, key_list)
            views = (self.store.fields_views(conn, key_list)
                     if any(c.fields for c in changes) else {})
        rules = self.rules
        plan = Plan()
        for change, origin, (key, _, _) in zip(changes, origins, keys, strict=True):
            plan_esp_change(rules, plan, change, origin, key, snaps, crm_ids.get(key),
                            views.get(key))
        return self.absorb(plan, "crm")

    def membership_removals(self) -> Iterator[Plan]:
        """Each list fed by a CRM membership, reconciled with the CRM's members now: a
        contact the CRM had put on the list whose membership is gone is unsubscribed
        there (some CRMs remove a member without touching the person's record, so no
        incremental read shows it). Connectors that cannot list members are skipped."""
        for mapping in self.mapper.lists:
            if self.only_lists is not None and mapping.esp_list not in self.only_lists:
                continue
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
            rules = self.rules
            for start in range(0, len(gone), self.size):
                plan = Plan()
                for snap, email, record_id in gone[start:start + self.size]:
                    plan_removal(rules, plan, snap, email, record_id, str(key))
                yield self.absorb(plan, "esp")

    def resend_unsubscribes(self) -> Iterator[Change]:
        """A resend's last pass (see :func:`plan.resend_unsubscribes`)."""
        plan = Plan()

        def rows() -> Iterator[tuple[str, str, frozenset[str], str]]:
            after = ("", "")
            while page := self.store.unsubscribed_snapshots(after=after, limit=1000):
                yield from page
                after = (page[-1][0], page[-1][1])

        yield from resend_unsubscribes(self.rules, plan, rows())
        self.absorb(plan, "esp")

    # -- apply and commit ---------------------------------------------------------------
    def send_to_esp(self, decisions: Sequence[ContactDecision]) -> int:
        """Write decisions through the ESP API; commit what it acknowledged. Returns how
        many changes were sent."""
        if self.dry_run:
            return 0
        sendable = [d for d in decisions if d.send is not None]
        results = write_all(self.esp, [d.send for d in sendable if d.send is not None])
        outcome = {id(d): r for d, r in zip(sendable, results, strict=True)}
        with self.store.begin() as conn:
            commits = []
            for decision in decisions:
                result = outcome.get(id(decision))
                if result is not None and not result.ok:
                    self._write_failed(conn, decision, result, side="esp")
                    continue
                if result is not None:
                    self.stats.esp_written += 1
                commits.append(decision.update)
            self.store.commit(conn, commits, run_id=self.stats.run_id)
        return len(sendable)

    def apply_esp_changes(self, changes: Sequence[Change],
                          origins: Sequence[dict[str, Any] | None] | None = None, *,
                          follow_up: bool = False) -> list[Change]:
        """Decide ESP-side changes, write the CRM, commit; then post-operations.

        Returns the changes as applied (only the lists whose status changed)."""
        emails = [e for c in changes for e in (c.email, c.previous_email) if e]
        with self.contacts_locked(emails):
            done = self._apply_esp_changes(changes, origins, follow_up=follow_up)
        if done is None:
            return []
        if not follow_up and self.follows:
            self.run_post_operations()
        return done

    def _apply_esp_changes(self, changes: Sequence[Change],
                           origins: Sequence[dict[str, Any] | None] | None, *,
                           follow_up: bool) -> list[Change] | None:
        plan = self.plan_esp_changes(changes, origins or [None] * len(changes))
        if self.dry_run:
            self._dry_follow_ups([d.applied for d in plan.decisions if d.applied])
            return None
        to_write = [d for d in plan.decisions if d.send is not None]
        results = write_all(self.crm, [d.send for d in to_write if d.send is not None])
        outcome = {id(d): r for d, r in zip(to_write, results, strict=True)}
        done_ids: list[int] = []
        commits = []
        with self.store.begin() as conn:
            for decision in plan.decisions:
                result = outcome.get(id(decision))
                if result is None or result.ok:
                    commits.append(decision)
                    if decision.origin:
                        done_ids.append(decision.origin["id"])
                    if result is not None:
                        self.stats.crm_written += 1
                    continue
                self._write_failed(conn, decision, result, side="crm")
                # the ESP's word stands even though the CRM did not take it yet
                self.store.put_snapshots(conn, decision.if_failed)
                self.store.append_journal(conn, [
                    replace(j, applied_to="state", reason=f"CRM write failed: {result.error}")
                    for j in decision.update.journal if j.old_status != j.new_status
                    and j.reason != "written again after an earlier failure"])
            self.store.commit(conn, [d.update for d in commits], run_id=self.stats.run_id)
            self.store.outbox_done(conn, done_ids)
            done = [d.applied for d in commits if d.applied is not None]
            # In the same transaction as the change itself: what must follow it. A crash
            # right after the commit cannot lose a cascade or the ESP's copy of one.
            # (Without post-operation hooks nothing follows a change: nothing to stage.)
            if follow_up or self.hooks.has_post_operations:
                self.store.stage(conn, "esp" if follow_up else "postop",
                                 [{"payload": c.model_dump(mode="json")} for c in done],
                                 run_id=self.stats.run_id,
                                 batch="followups" if follow_up else "postop")
        return done

    def apply_crm_records(self, records: Sequence[Contact]) -> list[Failure]:
        """Send CRM records (a notification, a poll) to the ESP API now: mapping, diff,
        consent, write, commit, repairs, post-operations. Returns what failed."""
        before = len(self.failures)
        with self.contacts_locked([e for r in records for e in (r.email, r.previous_email)
                                   if e]):
            self.send_to_esp(self.plan_crm_page(records).decisions)
        self.flush_repairs()
        if self.follows:
            self.run_post_operations()
            self.flush_followups()
        return self.failures[before:]

    def apply_esp_events(self, changes: Sequence[Change]) -> list[Failure]:
        """Apply ESP-side events (webhooks) to the CRM now, and their follow-ups."""
        before = len(self.failures)
        self.apply_esp_changes(changes)
        if self.follows:
            self.flush_followups()
        return self.failures[before:]

    def _write_failed(self, conn: Connection, decision: ContactDecision, result: WriteResult,
                      *, side: str) -> None:
        row = decision.origin
        email = decision.send.email if decision.send is not None else decision.email
        lists = ",".join(s.list_id for s in decision.update.snapshots) or ",".join(
            decision.send.subscriptions if decision.send is not None else ())
        attempts = (row or {}).get("attempts", 0) + 1
        if row and result.retryable and attempts < self.max_attempts:
            self.store.outbox_retry(conn, row["id"], attempts, result.error)
            self.failures.append(Failure(side, email, lists,
                                         f"{result.error} (will retry, attempt {attempts})",
                                         code=result.code or "", retryable=True,
                                         retry_after=result.retry_after))
            return
        if row and result.retryable:
            self.store.outbox_dead(conn, row, result.error or "failed")
        elif row:
            self.store.outbox_done(conn, [row["id"]], status="failed", error=result.error)
        self.failures.append(Failure(side, email, lists, result.error or "failed",
                                     code=result.code or "",
                                     retryable=result.retryable and row is None,
                                     retry_after=result.retry_after))

    # -- what follows a change ------------------------------------------------------------
    def run_post_operations(self) -> None:
        """Run the post-operations queued with the changes they follow (durably)."""
        if self.dry_run:
            return
        while rows := self.store.pending("postop", limit=self.size):
            self.post_operations([Change.model_validate(row["payload"]) for row in rows])
            with self.store.begin() as conn:
                self.store.outbox_done(conn, [row["id"] for row in rows])

    def post_operations(self, applied: list[Change]) -> None:
        follow_ups: list[Change] = []
        calls: list[tuple[Change, dict[str, Any]]] = []
        for change in applied:
            # a CRM record's own change was applied to the ESP; an ESP event's to the CRM
            context = PostOpContext(
                applied_to="esp" if change.source.startswith("crm:") else "crm",
                mode=self.mode, run_id=self.stats.run_id, all_lists=self.config.list_ids())
            follow_ups.extend(self.hooks.post_operation(change, context))
            calls.extend((change, call) for call in context.extra.get("calls", []))
        if calls:
            with self.store.begin() as conn:
                self.store.append_journal(conn, [JournalEntry(
                    contact_key="", email=change.email, list_id=call["list"], old_status=None,
                    new_status=change.subscriptions[call["list"]].status.value
                    if call["list"] in change.subscriptions else "unsubscribed",
                    applied_to="url", source="post_operation",
                    reason=f"call {call['url']}: {call.get('status') or call.get('error')}"
                           f"{'' if call['ok'] else ' (failed)'}",
                    run_id=self.stats.run_id) for change, call in calls])
            self.stats.post_operations += len(calls)
        if follow_ups:
            # applied, journaled and queued for the ESP (which did not make them) at once
            cascaded = self.apply_esp_changes(follow_ups, follow_up=True)
            self.stats.post_operations += len(cascaded)

    def _dry_follow_ups(self, applied: Iterable[Change | None]) -> None:
        for change in applied:
            if change is None:
                continue
            context = PostOpContext(applied_to="crm", mode="batch", run_id="dry-run",
                                    all_lists=self.config.list_ids(), extra={"dry_run": True})
            for follow in self.hooks.post_operation(change, context):
                for list_id, sub in follow.subscriptions.items():
                    self.stats.count(list_id, "crm", sub.status.value)
                    self.stats.count(list_id, "esp", sub.status.value)

    def flush_followups(self) -> None:
        """Write the ESP's copies of cascades (queued with them) through the ESP API."""
        if self.dry_run:
            return
        while rows := self.store.pending("esp", batch="followups", limit=self.size):
            changes = [Change.model_validate(row["payload"]) for row in rows]
            results = write_all(self.esp, changes)
            with self.store.begin() as conn:
                for row, change, result in zip(rows, changes, results, strict=True):
                    if result.ok:
                        self.stats.esp_written += 1
                        self.store.outbox_done(conn, [row["id"]])
                    else:
                        self._write_failed(conn, ContactDecision(
                            change.email, change, StateUpdate(""), origin=row), result,
                            side="esp")
            if any(not r.ok and r.retryable for r in results):
                return

    def flush_repairs(self) -> None:
        """Write to the CRM the unsubscribes it does not show yet; journal each once."""
        repairs, self.repairs = self.repairs, []
        planned = plan_repairs(self.rules, repairs)
        if self.dry_run:
            for items, _ in planned:
                for item in items:
                    self.stats.count(item.list_id, "crm", Status.UNSUBSCRIBED.value)
            return
        rules = self.rules
        for start in range(0, len(planned), self.size):
            chunk = planned[start:start + self.size]
            results = write_all(self.crm, [change for _, change in chunk])
            with self.store.begin() as conn:
                for (items, change), result in zip(chunk, results, strict=True):
                    if not result.ok:
                        self.failures.append(Failure(
                            "crm", change.email, ",".join(i.list_id for i in items),
                            f"{result.error} (an earlier unsubscribe; retried next run)",
                            code=result.code or "", retryable=result.retryable))
                        continue
                    self.stats.crm_written += 1
                    self.store.commit(conn, [repaired(rules, items)], run_id=rules.run_id)
                    for item in items:
                        self.stats.count(item.list_id, "crm", Status.UNSUBSCRIBED.value)

    def send_resend_unsubscribes(self) -> None:
        """API mode: every unsubscribe crmsync knows, sent again."""
        changes = self.resend_unsubscribes()
        while batch := list(itertools.islice(changes, self.size)):
            for sent, result in zip(batch, write_all(self.esp, batch), strict=True):
                if result.ok:
                    self.stats.esp_written += 1
                else:
                    self.failures.append(Failure(
                        "esp", sent.email, ",".join(sent.subscriptions),
                        f"{result.error} (a resent unsubscribe; run --resend again)",
                        code=result.code or "", retryable=result.retryable))
