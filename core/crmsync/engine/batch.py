"""The batch run: ESP unsubscriptions into the CRM, then CRM changes out to the ESP.

One run, in order:

1. **recover**: finish what a killed run left half-done (an import file written or
   uploaded but not committed; inbound changes queued but not written to the CRM);
2. **inbound**: read the ESP's unsubscriptions (export files from the file space, or
   the ESP API since the ``esp`` cursor), queue them, then plan, apply and commit them
   (:class:`~crmsync.engine.apply.Pipeline`); processed files move to the archive;
3. **outbound**: read the CRM (full, or since the ``crm`` cursor minus the overlap
   window), plan each page, then either stream an import file that is uploaded
   atomically with a manifest, or write through the ESP API in batches; what a change
   commits is committed only once the ESP side has acknowledged it.

Inbound runs first so that an unsubscribe the ESP reports is known before stale CRM
data could be sent the other way. A run killed anywhere and started again ends as an
uninterrupted run would: queued work is finished, not redone, and a change the ESP or
CRM already acknowledged is not sent twice (the snapshots say it is already there).

A dry run plans every page and counts; it reads the vendors and the state store and
writes nothing anywhere (no run row, no cursor, no file).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..config import Config
from ..contract import Connector, FileExchange
from ..errors import ConfigError, CrmsyncError, DataError, QuotaExhausted, TransportError
from ..files import FileSpace
from ..hooks import Hooks
from ..model import Change, Contact, Cursor, Status
from ..state import FileStatus, StateStore
from .apply import Export, ImportFileSink, Observer, Pipeline, RunStats
from .completeness import IncompleteRead, checked_full_read
from .plan import ContactDecision, Failure

__all__ = ["BatchSync", "Failure", "RunStats"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]


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
        observer: Observer | None = None,
    ) -> None:
        if not config.lists:
            raise ConfigError("no [[lists]] in the configuration: map at least one ESP list")
        self.config = config
        self.crm = crm
        self.esp = esp
        self.store = store
        self.hooks = hooks or Hooks()
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
        self.observer = observer
        self.spool_dir = spool_dir or config.path(".crmsync-spool")
        self.stats = RunStats()
        self.sync = Pipeline(config, crm, esp, store, hooks=self.hooks, stats=self.stats,
                             max_attempts=max_attempts, observer=observer)
        self._short_read: IncompleteRead | None = None
        self.sink = (ImportFileSink(config, esp, files, store, self.stats, self.spool_dir)
                     if self.file_mode and isinstance(esp, FileExchange) and files is not None
                     else None)

    @property
    def failures(self) -> list[Failure]:
        return self.sync.failures

    # -- the run --------------------------------------------------------------------------
    def run(self, *, full: bool = False, dry_run: bool = False, resend: bool = False,
            lists: Sequence[str] | None = None) -> RunStats:
        """One run. ``full``: read every CRM contact (else since the cursor); changed
        ones go out. ``resend``: read every contact and send again, changed or not, each
        subscribed contact's lists and fields and every unsubscribe crmsync knows, to
        repair an ESP that lost or drifted from what crmsync sent (pending ones are not
        re-sent: see docs/batch.md); nothing is journaled, since nothing changed.
        ``dry_run``: plan and count only; nothing is written anywhere. ``lists``: the
        outbound half for these ESP lists only (the ESP's unsubscriptions of every list
        are still read first); the CRM cursor is not moved, since the other lists'
        changes were not sent."""
        if lists is not None:
            unknown = sorted(set(lists) - set(self.sync.mapper.by_list))
            if unknown:
                raise ConfigError(
                    f"--list {', '.join(unknown)}: not an ESP list of this configuration "
                    f"(its [[lists]] map {', '.join(sorted(self.sync.mapper.by_list))})")
            self.sync.only_lists = frozenset(lists)
        started = time.monotonic()
        stats = self.stats
        stats.resend = resend
        stats.full = full or resend or self.store.get_cursor("crm") is None
        stats.dry_run = self.sync.dry_run = dry_run
        stats.esp_mode = "files" if self.file_mode else "api"
        stats.run_id = (self.store.new_run_id() if dry_run else
                        self.store.start_run("batch", full=stats.full, dry_run=False))
        if not dry_run:
            self.hooks.run_started(stats.run_id, "batch", stats.full)
        try:
            if dry_run:
                self._inbound()
                self._outbound(stats.full)
            else:
                # one writer of snapshots at a time: a real-time worker pauses meanwhile.
                # PostgreSQL in API mode: `crmsync worker`s go on beside the run, each
                # contact locked from decision to commit (the run's pages too); the run
                # holds them all back only for its phases not locked per contact.
                self.sync.lock_contacts = (self.store.dialect == "postgresql"
                                           and not self.file_mode)
                whole = (self.store.exclusive("decisions", wait_s=120)
                         if self.store.dialect == "postgresql" and self.file_mode
                         else contextlib.nullcontext())
                with self.store.exclusive("batch", wait_s=120), whole:
                    if self.sink is not None:
                        self.sink.recover()
                    with self._held():
                        self.sync.run_post_operations()
                    self._inbound()
                    self._outbound(stats.full)
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
            if not dry_run:
                self._finish(stats)
        return stats

    def _finish(self, stats: RunStats) -> None:
        if self.failures:
            try:
                stats.report = str(self._write_report(stats.run_id))
            except OSError as exc:  # the report must never stop the run finishing
                log.error("cannot write the failed-records report (%s): fix [sync] "
                          "report_dir; this run's %d failure(s) stay in its stats", exc,
                          len(self.failures))
        self.store.finish_run(stats.run_id, stats.status, stats.as_dict())
        self.hooks.run_finished(stats.run_id, stats.as_dict())

    # -- one change at a time (kept for embedders; the real-time worker uses Pipeline) ----
    def apply_esp_changes(self, changes: list[Change]) -> list[Failure]:
        """Apply ESP-side changes to the CRM now; returns what failed."""
        return self.sync.apply_esp_events(changes)

    def apply_crm_records(self, records: list[Contact]) -> list[Failure]:
        """Send CRM records to the ESP API now; returns what failed."""
        return self.sync.apply_crm_records(records)

    # -- inbound: the ESP's unsubscriptions into the CRM ---------------------------------
    def _inbound(self) -> None:
        if self.file_mode:
            self._inbound_files()
        else:
            self._inbound_api()
        if not self.sync.dry_run:
            self._apply_queued_inbound()

    def _queue_inbound(self, changes: list[Change], batch: str, where: str) -> None:
        """Queue ESP-side changes (a dry run plans them at once instead)."""
        if self.sync.dry_run:
            self.sync.apply_esp_changes(changes)
            return
        with self.store.begin() as conn:
            self.store.stage(conn, "crm", [{"payload": c.model_dump(mode="json"),
                                            "snapshot": {"where": where}} for c in changes],
                             run_id=self.stats.run_id, batch=batch)

    def _inbound_files(self) -> None:
        assert self.files is not None and isinstance(self.esp, FileExchange)
        folder = self.config.files.export_dir
        for name in self._new_exports(folder):
            count = 0
            # The whole file is queued or none of it (one transaction), streamed in
            # chunks so a large export does not have to fit in memory.
            with self.store.begin() as conn, self.files.open_whole(folder, name) as handle:
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
                        self._queue_in(conn, chunk, name)
                        chunk = []
                self._queue_in(conn, chunk, name)
                if not self.sync.dry_run:
                    size, modified = self.files.read_stamps[name]  # only that is archived
                    self.store.set_file(conn, f"in:{name}", direction="in",
                                        run_id=self.stats.run_id, status=FileStatus.STAGED,
                                        rows=count, info={"size": size, "modified": modified})
            self.stats.esp_unsubscribes_read += count
            self.progress("esp unsubscriptions", count)

    def _queue_in(self, conn: Any, changes: list[Change], name: str) -> None:
        if self.sync.dry_run:
            self.sync.apply_esp_changes(changes)
        elif changes:
            self.store.stage(conn, "crm", [{"payload": c.model_dump(mode="json"),
                                            "snapshot": {"where": name}} for c in changes],
                             run_id=self.stats.run_id, batch=f"file:{name}")

    def _new_exports(self, folder: str) -> list[str]:
        """Exports not read yet (an applied one is archived on the way), less those the
        ESP may still be writing: they are left for a later run."""
        assert self.files is not None and isinstance(self.esp, FileExchange)
        fresh = []
        for name in self.files.list(folder, self.esp.export_file_pattern()):
            known = self.store.file(f"in:{name}")
            if known and known["status"] in (FileStatus.STAGED, FileStatus.APPLIED):
                if known["status"] == FileStatus.APPLIED and not self.sync.dry_run:
                    self._archive(name)
                continue
            if known and known["status"] == FileStatus.ARCHIVED:
                continue
            fresh.append(name)
        return list(self.files.settled(folder, fresh, self.config.files.stable_s))

    def _inbound_api(self) -> None:
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
        # a diff run reads the unsubscribed recipients where the ESP can list them,
        # rather than every recipient that changed (the previous run's own writes too)
        pages = None if since is None else self.esp.read_unsubscriptions(since)
        for page in self.esp.read(since) if pages is None else pages:
            changes = [c for c in (self._unsubscriptions_of(r) for r in page.records) if c]
            self.stats.esp_unsubscribes_read += len(changes)
            self.progress("esp unsubscriptions", len(changes))
            self._queue_inbound(changes, "api", "esp api")
            if self.sync.dry_run:
                continue
            self._apply_queued_inbound()
            if page.cursor is not None and page.cursor.key() >= last.key():
                last = page.cursor
                with self.store.begin() as conn:
                    self.store.set_cursor(conn, "esp", last)
        if cursor is None and not self.sync.dry_run and last.key() < started.key():
            with self.store.begin() as conn:  # an ESP without cursors: start from this run
                self.store.set_cursor(conn, "esp", started)

    def _unsubscriptions_of(self, record: Contact) -> Change | None:
        subs = {list_id: sub for list_id, sub in record.subscriptions.items()
                if sub.status == Status.UNSUBSCRIBED and list_id in self.sync.mapper.by_list}
        if not subs:
            return None
        return Change(email=record.email, ids=record.ids, subscriptions=subs,
                      source=f"esp:{self.esp.name}", occurred_at=record.modified_at
                      or datetime.now(UTC))

    def _apply_queued_inbound(self) -> None:
        after = 0
        while rows := self.store.pending("crm", limit=self.config.sync.batch_size,
                                         after_id=after):
            after = rows[-1]["id"]
            self.sync.apply_esp_changes([Change.model_validate(row["payload"]) for row in rows],
                                        rows)
        for record in self.store.files_in("in", [FileStatus.STAGED]):
            name = record["name"][len("in:"):]
            if not self.store.pending("crm", batch=f"file:{name}", limit=1):
                with self.store.begin() as conn:
                    self.store.set_file(conn, record["name"], direction="in",
                                        run_id=record["run_id"], status=FileStatus.APPLIED,
                                        rows=record["rows"], info=record["info"])
                self._archive(name)

    def _archive(self, name: str) -> None:
        """Move an applied export to the archive, unless it changed since it was read (it
        is then read again next run). A failure is reported and the run goes on: the
        outbound half must not wait for an archive folder."""
        assert self.files is not None
        folder = self.config.files.export_dir
        read = (self.store.file(f"in:{name}") or {}).get("info") or {}
        status = FileStatus.ARCHIVED
        try:
            with contextlib.suppress(FileNotFoundError):  # moved by an interrupted run
                if "size" in read and list(self.files.stamp(folder, name)) != [
                        read["size"], read["modified"]]:
                    log.warning("%s changed after it was read: not archived, read again "
                                "next run", name)
                    status = FileStatus.CHANGED
                else:
                    self.files.archive(folder, name, self.config.files.archive_dir)
        except TransportError as exc:
            self.failures.append(Failure(
                "esp", "", "", f"{exc} (its unsubscribes were applied; it is archived by the "
                "next run once the archive folder works)", where=name, code="archive"))
            return
        with self.store.begin() as conn:
            self.store.set_file(conn, f"in:{name}", direction="in", run_id=self.stats.run_id,
                                status=status)
        if status == FileStatus.ARCHIVED:
            self.stats.files_archived.append(name)

    # -- outbound: CRM changes to the ESP -------------------------------------------------
    def _pages(self, full: bool) -> Iterator[tuple[list[ContactDecision], Cursor | None]]:
        """The CRM read (full, or since the cursor less the overlap), a planned page at a
        time."""
        cursor = None if full else self.store.get_cursor("crm")
        since = None if cursor is None else Cursor(
            at=cursor.at - timedelta(seconds=self.config.sync.overlap_s), tie_id="",
            data=cursor.data)
        pages = self.crm.read(since)
        if since is None:  # a full read must come back whole: see completeness.py
            pages = checked_full_read(self.crm, pages, self._forget_crm_cursor)
        try:
            for page in pages:
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
                # the page's contacts stay locked until its caller has sent and committed
                # them (it asks for the next page only then)
                with self.sync.contacts_locked(
                        [e for r in records for e in (r.email, r.previous_email) if e]):
                    yield self.sync.plan_crm_page(records).decisions, page.cursor
        except IncompleteRead as exc:
            # What was read still goes out (the file is finished and committed, without
            # the cursor); the run fails once the outbound half is done.
            self._short_read = exc

    def _forget_crm_cursor(self) -> None:
        """A full read came up short: the next run reads everything again."""
        if not self.sync.dry_run:
            with self.store.begin() as conn:
                self.store.clear_cursor(conn, "crm")

    def _outbound(self, full: bool) -> None:
        sync = self.sync
        if sync.dry_run:
            for _decisions, _cursor in self._pages(full):
                pass
            for _plan in sync.membership_removals():
                pass
            if self.stats.resend:
                for _change in sync.resend_unsubscribes():
                    pass
            sync.flush_repairs()
            for row in self.store.pending("esp", batch="followups", limit=1_000_000):
                for list_id, sub in Change.model_validate(row["payload"]).subscriptions.items():
                    self.stats.count(list_id, "esp", sub.status.value)
        else:
            if self.file_mode:
                self._export_file(full)
            else:
                self._outbound_api(full)
            with self._held():
                sync.flush_repairs()
                # What follows the CRM's own status changes (a cascade: CRM written now,
                # the ESP in this same run: through the API, or in a small second file).
                sync.run_post_operations()
                if not self.file_mode:
                    sync.flush_followups()
            if self.file_mode and self.store.pending("esp", batch="followups", limit=1):
                self._export_file(full, followups_only=True)
        if self._short_read is not None:
            raise self._short_read

    def _held(self) -> contextlib.AbstractContextManager[None]:
        """Every contact for a phase not locked per contact, when the pages are (the
        "decisions" lock `crmsync worker`s share); else nothing: the run holds all."""
        if not self.sync.lock_contacts:
            return contextlib.nullcontext()
        return self.store.exclusive("decisions", wait_s=120)

    # API mode: write in batches, commit each acknowledged batch, cursor per page.
    def _outbound_api(self, full: bool) -> None:
        sync = self.sync
        with self._held():
            sync.flush_followups()
        size = self.config.sync.batch_size
        for decisions, cursor in self._pages(full):  # each page's contacts locked
            for start in range(0, len(decisions), size):
                self.progress("esp written", sync.send_to_esp(decisions[start:start + size]))
            if cursor is not None and self.sync.only_lists is None:
                with self.store.begin() as conn:
                    self.store.set_cursor(conn, "crm", cursor)
        with self._held():
            for removed in sync.membership_removals():
                self.progress("esp written", sync.send_to_esp(removed.decisions))
            if self.stats.resend:
                sync.send_resend_unsubscribes()

    # File mode: the import file with its commit spool, through the file sink.
    def _export_file(self, full: bool, *, followups_only: bool = False) -> None:
        assert self.sink is not None and isinstance(self.esp, FileExchange)
        run_id = self.stats.run_id
        name = self.esp.import_file_name(f"{run_id}.followups" if followups_only else run_id)

        def stream(export: Export) -> Iterator[Change]:
            for row in self.store.pending("esp", batch="followups", limit=1_000_000):
                export.followup_ids.append(row["id"])
                export.sent += 1
                yield Change.model_validate(row["payload"])
            if followups_only:
                return
            for decisions, cursor in self._pages(full):
                export.spool.add(d.update for d in decisions)
                export.cursor = cursor or export.cursor
                for decision in decisions:
                    if decision.send is not None:
                        export.sent += 1
                        yield decision.send
            if self._short_read is not None or self.sync.only_lists is not None:
                export.cursor = None  # what was read is committed, the cursor is not
            for removed in self.sync.membership_removals():
                export.spool.add(d.update for d in removed.decisions)
                for decision in removed.decisions:
                    assert decision.send is not None
                    export.sent += 1
                    yield decision.send
            if self.stats.resend:
                for change in self.sync.resend_unsubscribes():
                    export.sent += 1
                    yield change

        self.sink.export(name, stream)

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
