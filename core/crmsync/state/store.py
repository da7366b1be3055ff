"""The state store: cursors, identities, snapshots, journal, runs, inbox, outbox, files.

One schema on SQLAlchemy Core: a SQLite file by default, PostgreSQL by URL. Methods
that must happen together take a ``conn`` from :meth:`StateStore.begin` so that, for
example, snapshots, the journal and a cursor are committed in one transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from ..errors import StateBusy, StateError
from ..model import Change, Cursor, Status, utc
from . import schema as t
from .migrations import migrate

__all__ = ["JournalEntry", "Snapshot", "StateStore", "content_hash"]

_CHUNK = 500


def content_hash(value: Any) -> str:
    """A stable hash of a JSON-able value (sorted keys)."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


@dataclass(frozen=True)
class Snapshot:
    """What crmsync believes about one contact on one list."""

    contact_key: str
    list_id: str
    status: Status
    groups: frozenset[str]
    crm_status: Status | None
    hash: str
    changed_at: datetime
    source: str


@dataclass(frozen=True)
class JournalEntry:
    """One status change, appended to the audit journal."""

    contact_key: str
    email: str
    list_id: str
    old_status: str | None
    new_status: str
    applied_to: str
    source: str
    reason: str | None = None
    event_id: str | None = None
    run_id: str = ""
    at: datetime | None = None


class StateStore:
    """The state store behind one SQLAlchemy engine."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        try:
            if url.startswith("sqlite"):
                self.engine: Engine = create_engine(
                    url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(url, echo=echo, pool_pre_ping=True)
            self.version = migrate(self.engine)
        except StateError:
            raise
        except SQLAlchemyError as exc:
            raise StateError(
                f"cannot open the state store at {_safe_url(url)}: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}; check [state] url and that the database is up"
            ) from None
        self.dialect = self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def exclusive(self, name: str, *, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the named lock for the block, or raise ``StateError`` if another process
        holds it: two batch runs on one state store would send the same changes twice.

        PostgreSQL: a session advisory lock. SQLite: an exclusive lock on a file beside
        the database. Either is released when the holder dies, so a killed run never
        leaves a stale lock behind. ``wait_s``: how long to keep trying for it.
        """
        import time

        deadline = time.monotonic() + wait_s
        busy = (f"another crmsync process holds the {name!r} lock on this state store "
                f"({_safe_url(self.url)}): wait for it to finish, or check `crmsync status`")
        if self.dialect == "postgresql":
            key = int(hashlib.sha256(f"crmsync:{name}".encode()).hexdigest()[:15], 16)
            with self.engine.connect() as conn:
                while True:
                    got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                       {"k": key}).scalar()
                    conn.commit()
                    if got:
                        break
                    if time.monotonic() >= deadline:
                        raise StateBusy(busy)
                    time.sleep(0.2)
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
            return
        import fcntl

        database = self.engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.{name}.lock", "a+") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StateBusy(busy) from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StateError(f"the state store failed: {str(exc).splitlines()[0]}") from None

    def _insert(self, table: Any) -> Any:
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)

    # -- cursors --------------------------------------------------------------------------
    def get_cursor(self, name: str) -> Cursor | None:
        with self.begin() as conn:
            row = conn.execute(select(t.cursors).where(t.cursors.c.name == name)).first()
        if row is None:
            return None
        return Cursor(at=_aware(row.at), tie_id=row.tie_id, data=row.data or {})

    def set_cursor(self, conn: Connection, name: str, cursor: Cursor) -> None:
        stmt = self._insert(t.cursors).values(
            name=name, at=cursor.at, tie_id=cursor.tie_id, data=dict(cursor.data),
            updated_at=_now())
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"at": cursor.at, "tie_id": cursor.tie_id, "data": dict(cursor.data),
                  "updated_at": _now()}))

    def clear_cursor(self, conn: Connection, name: str) -> None:
        conn.execute(t.cursors.delete().where(t.cursors.c.name == name))

    def cursors(self) -> dict[str, Cursor]:
        with self.begin() as conn:
            rows = conn.execute(select(t.cursors)).all()
        return {row.name: Cursor(at=_aware(row.at), tie_id=row.tie_id, data=row.data or {})
                for row in rows}

    # -- identities -----------------------------------------------------------------------
    def resolve(self, conn: Connection, items: Sequence[tuple[str, str | None, str]]
                ) -> list[tuple[str, bool, str | None]]:
        """Contact keys for ``(system, record_id, email)`` items: by id, then by email.

        Returns ``(key, created, previous_email)`` per item. A known id whose email
        changed keeps its key and the email is updated (``previous_email`` says what it
        was): an email change is never a new contact.
        """
        by_id: dict[tuple[str, str], str] = {}
        pairs = [(s, r) for s, r, _ in items if r]
        for chunk in _chunks(pairs):
            systems = {s for s, _ in chunk}
            ids = {r for _, r in chunk}
            for row in conn.execute(select(t.id_map).where(
                    and_(t.id_map.c.system.in_(systems), t.id_map.c.record_id.in_(ids)))):
                by_id[(row.system, row.record_id)] = row.contact_key
        emails = {e for _, _, e in items}
        by_email: dict[str, str] = {}
        for chunk in _chunks(sorted(emails)):
            for row in conn.execute(select(t.contacts.c.key, t.contacts.c.email)
                                    .where(t.contacts.c.email.in_(chunk))
                                    .order_by(t.contacts.c.updated_at)):
                by_email[row.email] = row.key
        out: list[tuple[str, bool, str | None]] = []
        new_contacts: dict[str, dict[str, Any]] = {}
        new_ids: dict[tuple[str, str], str] = {}
        email_updates: dict[str, str] = {}
        now = _now()
        for system, record_id, email in items:
            key = by_id.get((system, record_id)) if record_id else None
            created = False
            if key is not None:
                email_updates[key] = email
            else:
                key = by_email.get(email)
                if key is None:
                    key = uuid.uuid4().hex
                    created = True
                    new_contacts[key] = {"key": key, "email": email, "fields_hash": None,
                                         "deleted": False, "updated_at": now}
                    by_email[email] = key
                if record_id:
                    by_id[(system, record_id)] = key
                    new_ids[(system, record_id)] = key
            out.append((key, created, None))
        if new_contacts:
            conn.execute(t.contacts.insert(), list(new_contacts.values()))
        if new_ids:
            stmt = self._insert(t.id_map).on_conflict_do_nothing()
            conn.execute(stmt, [{"system": s, "record_id": r, "contact_key": k}
                                for (s, r), k in new_ids.items()])
        if email_updates:
            current = self.emails(conn, list(email_updates))
            moved = {}
            for key, email in email_updates.items():
                if current.get(key) not in (None, email):
                    moved[key] = current[key]
                    conn.execute(update(t.contacts).where(t.contacts.c.key == key)
                                 .values(email=email, updated_at=now))
            if moved:
                out = [(key, created, moved.get(key)) for key, created, _ in out]
        return out

    def emails(self, conn: Connection, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in _chunks(list(keys)):
            for row in conn.execute(select(t.contacts.c.key, t.contacts.c.email)
                                    .where(t.contacts.c.key.in_(chunk))):
                found[row.key] = row.email
        return found

    def record_ids(self, conn: Connection, system: str, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in _chunks(list(keys)):
            for row in conn.execute(select(t.id_map.c.contact_key, t.id_map.c.record_id)
                                    .where(and_(t.id_map.c.system == system,
                                                t.id_map.c.contact_key.in_(chunk)))):
                found[row.contact_key] = row.record_id
        return found

    def fields_hashes(self, conn: Connection, keys: Sequence[str]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for chunk in _chunks(list(keys)):
            for row in conn.execute(select(t.contacts.c.key, t.contacts.c.fields_hash)
                                    .where(t.contacts.c.key.in_(chunk))):
                found[row.key] = row.fields_hash
        return found

    def set_fields_hashes(self, conn: Connection, hashes: dict[str, str],
                          views: dict[str, dict[str, str | None]] | None = None) -> None:
        """Record the mapped fields last sent per contact: their hash, and the values."""
        if not hashes:
            return
        now = _now()
        from sqlalchemy import bindparam

        views = views or {}
        stmt = (update(t.contacts).where(t.contacts.c.key == bindparam("k"))
                .values(fields_hash=bindparam("h"), fields_json=bindparam("v"), updated_at=now))
        conn.execute(stmt, [{"k": k, "h": h, "v": views.get(k)} for k, h in hashes.items()])

    def fields_views(self, conn: Connection, keys: Sequence[str]
                     ) -> dict[str, dict[str, str | None]]:
        """The mapped fields last sent per contact (only where they were recorded)."""
        found: dict[str, dict[str, str | None]] = {}
        for chunk in _chunks(list(keys)):
            for row in conn.execute(select(t.contacts.c.key, t.contacts.c.fields_json)
                                    .where(t.contacts.c.key.in_(chunk))):
                if row.fields_json is not None:
                    found[row.key] = dict(row.fields_json)
        return found

    # -- snapshots ------------------------------------------------------------------------
    def snapshots(self, conn: Connection, keys: Sequence[str]) -> dict[tuple[str, str], Snapshot]:
        found: dict[tuple[str, str], Snapshot] = {}
        for chunk in _chunks(list(keys)):
            for row in conn.execute(select(t.snapshots).where(
                    t.snapshots.c.contact_key.in_(chunk))):
                found[(row.contact_key, row.list_id)] = _snapshot(row)
        return found

    def put_snapshots(self, conn: Connection, items: Iterable[Snapshot]) -> None:
        rows = [{"contact_key": s.contact_key, "list_id": s.list_id, "status": s.status.value,
                 "groups": ",".join(sorted(s.groups)),
                 "crm_status": s.crm_status.value if s.crm_status else None, "hash": s.hash,
                 "changed_at": s.changed_at, "source": s.source} for s in items]
        if not rows:
            return
        stmt = self._insert(t.snapshots)
        stmt = stmt.on_conflict_do_update(
            index_elements=["contact_key", "list_id"],
            set_={name: stmt.excluded[name] for name in
                  ("status", "groups", "crm_status", "hash", "changed_at", "source")})
        for chunk in _chunks(rows):
            conn.execute(stmt, chunk)

    def status_counts(self) -> dict[str, dict[str, int]]:
        with self.begin() as conn:
            rows = conn.execute(select(t.snapshots.c.list_id, t.snapshots.c.status,
                                       func.count()).group_by(t.snapshots.c.list_id,
                                                              t.snapshots.c.status)).all()
        out: dict[str, dict[str, int]] = {}
        for list_id, status, count in rows:
            out.setdefault(list_id, {})[status] = count
        return out

    # -- journal --------------------------------------------------------------------------
    def append_journal(self, conn: Connection, entries: Iterable[JournalEntry]) -> int:
        rows = [{"at": e.at or _now(), "run_id": e.run_id, "contact_key": e.contact_key,
                 "email": e.email, "list_id": e.list_id, "old_status": e.old_status,
                 "new_status": e.new_status, "applied_to": e.applied_to, "source": e.source,
                 "reason": e.reason, "event_id": e.event_id} for e in entries]
        for chunk in _chunks(rows):
            conn.execute(t.journal.insert(), chunk)
        return len(rows)

    def journal(self, *, email: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        query = select(t.journal).order_by(t.journal.c.id)
        if email:
            keys = select(t.contacts.c.key).where(t.contacts.c.email == email.lower())
            query = query.where(or_(t.journal.c.email == email.lower(),
                                    t.journal.c.contact_key.in_(keys)))
        with self.begin() as conn:
            return [dict(row._mapping) for row in conn.execute(query.limit(limit))]

    # -- runs -----------------------------------------------------------------------------
    def start_run(self, mode: str, *, full: bool, dry_run: bool) -> str:
        run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f") + "-" + uuid.uuid4().hex[:4]
        with self.begin() as conn:
            conn.execute(t.runs.insert().values(id=run_id, mode=mode, full=full, dry_run=dry_run,
                                                started_at=_now(), status="running", stats={}))
        return run_id

    def finish_run(self, run_id: str, status: str, stats: dict[str, Any]) -> None:
        with self.begin() as conn:
            plain = json.loads(json.dumps(stats, default=str))
            conn.execute(update(t.runs).where(t.runs.c.id == run_id).values(
                finished_at=_now(), status=status, stats=plain))

    def runs(self, limit: int = 10) -> list[dict[str, Any]]:
        with self.begin() as conn:
            rows = conn.execute(select(t.runs).order_by(t.runs.c.started_at.desc())
                                .limit(limit)).all()
        return [dict(row._mapping) for row in rows]

    # -- outbox ---------------------------------------------------------------------------
    def stage(self, conn: Connection, target: str, items: Iterable[dict[str, Any]], *,
              run_id: str = "", batch: str = "") -> int:
        now = _now()
        rows = [{"target": target, "run_id": run_id, "batch": batch,
                 "contact_key": item.get("contact_key", ""), "payload": item["payload"],
                 "snapshot": item.get("snapshot"), "status": "pending", "attempts": 0,
                 "created_at": now} for item in items]
        for chunk in _chunks(rows):
            conn.execute(t.outbox.insert(), chunk)
        return len(rows)

    def pending(self, target: str, *, batch: str | None = None, limit: int = 1000,
                after_id: int = 0, conn: Connection | None = None) -> list[dict[str, Any]]:
        query = select(t.outbox).where(and_(t.outbox.c.target == target,
                                            t.outbox.c.status == "pending",
                                            t.outbox.c.id > after_id))
        if batch is not None:
            query = query.where(t.outbox.c.batch == batch)
        query = query.order_by(t.outbox.c.id).limit(limit)
        if conn is not None:
            return [dict(r._mapping) for r in conn.execute(query)]
        with self.begin() as own:
            return [dict(r._mapping) for r in own.execute(query)]

    def pending_batches(self, target: str) -> list[str]:
        with self.begin() as conn:
            rows = conn.execute(select(t.outbox.c.batch).where(and_(
                t.outbox.c.target == target, t.outbox.c.status == "pending"))
                .group_by(t.outbox.c.batch).order_by(func.min(t.outbox.c.id))).all()
        return [row[0] for row in rows]

    def count_pending(self) -> dict[str, int]:
        with self.begin() as conn:
            rows = conn.execute(select(t.outbox.c.target, func.count()).where(
                t.outbox.c.status == "pending").group_by(t.outbox.c.target)).all()
        return {target: count for target, count in rows}

    def outbox_done(self, conn: Connection, ids: Sequence[int], *, status: str = "done",
                    error: str | None = None) -> None:
        for chunk in _chunks(list(ids)):
            conn.execute(update(t.outbox).where(t.outbox.c.id.in_(chunk)).values(
                status=status, last_error=error, attempts=t.outbox.c.attempts + 1))

    def outbox_batch_done(self, conn: Connection, batch: str) -> None:
        conn.execute(update(t.outbox).where(and_(t.outbox.c.batch == batch,
                                                 t.outbox.c.status == "pending"))
                     .values(status="done"))

    def drop_batch(self, conn: Connection, batch: str) -> None:
        conn.execute(t.outbox.delete().where(and_(t.outbox.c.batch == batch,
                                                  t.outbox.c.status == "pending")))

    # -- files ----------------------------------------------------------------------------
    def file(self, name: str) -> dict[str, Any] | None:
        with self.begin() as conn:
            row = conn.execute(select(t.files).where(t.files.c.name == name)).first()
        return dict(row._mapping) if row else None

    def files_in(self, direction: str, statuses: Sequence[str]) -> list[dict[str, Any]]:
        with self.begin() as conn:
            rows = conn.execute(select(t.files).where(and_(
                t.files.c.direction == direction, t.files.c.status.in_(statuses)))
                .order_by(t.files.c.updated_at)).all()
        return [dict(row._mapping) for row in rows]

    def set_file(self, conn: Connection, name: str, *, direction: str, run_id: str,
                 status: str, rows: int = 0, sha256: str = "",
                 info: dict[str, Any] | None = None) -> None:
        values = {"direction": direction, "run_id": run_id, "status": status, "rows": rows,
                  "sha256": sha256, "info": info or {}, "updated_at": _now()}
        stmt = self._insert(t.files).values(name=name, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))

    # -- inbox (real time) ----------------------------------------------------------------
    def inbox_put(self, endpoint: str, dedupe_key: str, changes: Sequence[Change]) -> bool:
        """Store an event; ``False`` when the same event was already stored (redelivery)."""
        payload = [change.model_dump(mode="json") for change in changes]
        contact = changes[0].email if changes else ""
        now = _now()
        try:
            with self.engine.begin() as conn:
                conn.execute(t.inbox.insert().values(
                    endpoint=endpoint, dedupe_key=dedupe_key, contact=contact, payload=payload,
                    received_at=now, status="pending", attempts=0, next_attempt_at=now))
        except IntegrityError:
            return False
        except OperationalError as exc:
            raise StateError(f"the inbox could not store the event: {exc}") from None
        return True

    def inbox_due(self, *, limit: int = 100, now: datetime | None = None) -> list[dict[str, Any]]:
        """Pending events whose time has come, oldest first; one per contact at a time
        is the worker's job (it groups by ``contact``)."""
        now = now or _now()
        with self.begin() as conn:
            rows = conn.execute(select(t.inbox).where(and_(
                t.inbox.c.status == "pending", t.inbox.c.next_attempt_at <= now))
                .order_by(t.inbox.c.id).limit(limit)).all()
        return [dict(row._mapping) for row in rows]

    def inbox_blocked_contacts(self) -> set[str]:
        """Contacts with an event waiting for a retry: later events for them must wait."""
        with self.begin() as conn:
            rows = conn.execute(select(t.inbox.c.contact).where(and_(
                t.inbox.c.status == "pending", t.inbox.c.attempts > 0)).distinct()).all()
        return {row[0] for row in rows}

    def inbox_done(self, conn: Connection, event_id: int) -> None:
        conn.execute(update(t.inbox).where(t.inbox.c.id == event_id).values(
            status="done", attempts=t.inbox.c.attempts + 1, last_error=None))

    def inbox_retry(self, event_id: int, error: str, next_attempt_at: datetime) -> None:
        with self.begin() as conn:
            conn.execute(update(t.inbox).where(t.inbox.c.id == event_id).values(
                attempts=t.inbox.c.attempts + 1, last_error=error,
                next_attempt_at=next_attempt_at))

    def inbox_dead(self, event: dict[str, Any], error: str) -> None:
        with self.begin() as conn:
            conn.execute(update(t.inbox).where(t.inbox.c.id == event["id"]).values(
                status="dead", attempts=t.inbox.c.attempts + 1, last_error=error))
            conn.execute(t.dead_letters.insert().values(
                origin="inbox", origin_id=event["id"], endpoint=event["endpoint"],
                payload=event["payload"], error=error, attempts=event["attempts"] + 1,
                died_at=_now(), replayed=False))

    def inbox_counts(self) -> dict[str, int]:
        with self.begin() as conn:
            rows = conn.execute(select(t.inbox.c.status, func.count())
                                .group_by(t.inbox.c.status)).all()
        return {status: count for status, count in rows}

    def dead_letters(self, *, include_replayed: bool = False) -> list[dict[str, Any]]:
        query = select(t.dead_letters).order_by(t.dead_letters.c.id)
        if not include_replayed:
            query = query.where(t.dead_letters.c.replayed.is_(False))
        with self.begin() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def replay_dead_letters(self) -> int:
        """Put every dead event back in the inbox for another round of attempts."""
        now = _now()
        with self.begin() as conn:
            rows = conn.execute(select(t.dead_letters).where(
                t.dead_letters.c.replayed.is_(False))).all()
            for row in rows:
                if row.origin == "inbox":
                    conn.execute(update(t.inbox).where(t.inbox.c.id == row.origin_id).values(
                        status="pending", attempts=0, next_attempt_at=now, last_error=None))
                else:
                    conn.execute(update(t.outbox).where(t.outbox.c.id == row.origin_id)
                                 .values(status="pending", attempts=0))
                conn.execute(update(t.dead_letters).where(t.dead_letters.c.id == row.id)
                             .values(replayed=True))
        return len(rows)

    def outbox_dead(self, conn: Connection, row: dict[str, Any], error: str) -> None:
        conn.execute(update(t.outbox).where(t.outbox.c.id == row["id"]).values(
            status="dead", last_error=error, attempts=t.outbox.c.attempts + 1))
        conn.execute(t.dead_letters.insert().values(
            origin="outbox", origin_id=row["id"], endpoint=row["target"],
            payload=row["payload"], error=error, attempts=row["attempts"] + 1,
            died_at=_now(), replayed=False))

    # -- inbox: what the real-time worker needs ------------------------------------------
    def inbox_heads(self, *, limit: int = 100, now: datetime | None = None
                    ) -> list[dict[str, Any]]:
        """Due pending events that are each the oldest pending event of their contact.

        A contact whose first event waits for a retry blocks its later events, so a
        contact's events are applied in the order they were received.
        """
        # The worker runs this query many times a second: it is built once per store.
        query = getattr(self, "_inbox_heads_query", None)
        if query is None:
            from sqlalchemy import bindparam

            earlier = t.inbox.alias("earlier")
            blocked = select(earlier.c.id).where(and_(
                earlier.c.contact == t.inbox.c.contact, earlier.c.status == "pending",
                earlier.c.id < t.inbox.c.id)).exists()
            query = (select(t.inbox).where(and_(
                t.inbox.c.status == "pending", t.inbox.c.next_attempt_at <= bindparam("now"),
                ~blocked)).order_by(t.inbox.c.id).limit(bindparam("limit")))
            self._inbox_heads_query = query
        with self.begin() as conn:
            rows = conn.execute(query, {"now": now or _now(), "limit": limit}).all()
        return [dict(row._mapping) for row in rows]

    def inbox_next_due(self) -> datetime | None:
        """When the earliest pending event becomes due (``None``: nothing pending)."""
        with self.begin() as conn:
            value = conn.execute(select(func.min(t.inbox.c.next_attempt_at)).where(
                t.inbox.c.status == "pending")).scalar()
        return _aware(value)

    def inbox_pending_count(self) -> int:
        with self.begin() as conn:
            return int(conn.execute(select(func.count()).select_from(t.inbox).where(
                t.inbox.c.status == "pending")).scalar() or 0)

    def inbox_events(self, *, status: str | None = None, limit: int = 1000
                     ) -> list[dict[str, Any]]:
        """Stored events, oldest first (all statuses unless ``status``)."""
        query = select(t.inbox).order_by(t.inbox.c.id).limit(limit)
        if status is not None:
            query = query.where(t.inbox.c.status == status)
        with self.begin() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def inbox_prune(self, before: datetime) -> int:
        """Forget applied events received before ``before``; return how many.

        Kept until then, a done event still makes a late redelivery a duplicate.
        """
        with self.begin() as conn:
            result = conn.execute(t.inbox.delete().where(and_(
                t.inbox.c.status == "done", t.inbox.c.received_at < before)))
        return int(result.rowcount or 0)

    def inbox_put_many(self, items: Sequence[tuple[str, str, Sequence[Change]]]
                       ) -> list[bool]:
        """Store several events in one transaction (group commit); per event, ``False``
        when it was stored before (or earlier in ``items``)."""
        if not items:
            return []
        now = _now()
        wanted = {(endpoint, key) for endpoint, key, _ in items}
        try:
            with self.engine.begin() as conn:
                known = set()
                for endpoint in {endpoint for endpoint, _ in wanted}:
                    keys = [key for e, key in wanted if e == endpoint]
                    for chunk in _chunks(keys):
                        known |= {(endpoint, row[0]) for row in conn.execute(
                            select(t.inbox.c.dedupe_key).where(and_(
                                t.inbox.c.endpoint == endpoint,
                                t.inbox.c.dedupe_key.in_(chunk))))}
                rows, stored = [], []
                for endpoint, key, changes in items:
                    fresh = (endpoint, key) not in known
                    stored.append(fresh)
                    if fresh:
                        known.add((endpoint, key))
                        rows.append({"endpoint": endpoint, "dedupe_key": key,
                                     "contact": changes[0].email if changes else "",
                                     "payload": [c.model_dump(mode="json") for c in changes],
                                     "received_at": now, "status": "pending", "attempts": 0,
                                     "next_attempt_at": now})
                if rows:
                    conn.execute(t.inbox.insert(), rows)
        except IntegrityError:
            # another process stored one of them meanwhile: one at a time then
            return [self.inbox_put(endpoint, key, changes) for endpoint, key, changes in items]
        except OperationalError as exc:
            raise StateError(f"the inbox could not store the events: {exc}") from None
        return stored


def _snapshot(row: Any) -> Snapshot:
    return Snapshot(
        contact_key=row.contact_key, list_id=row.list_id, status=Status(row.status),
        groups=frozenset(filter(None, (row.groups or "").split(","))),
        crm_status=Status(row.crm_status) if row.crm_status else None, hash=row.hash,
        changed_at=utc(row.changed_at), source=row.source)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _safe_url(url: str) -> str:
    """The URL without its password."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
