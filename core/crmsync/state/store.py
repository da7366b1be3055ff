"""The state store: cursors, identities, snapshots, journal, runs, inbox, outbox, files.

One schema on SQLAlchemy Core: a SQLite file by default, PostgreSQL by URL. Methods
that must happen together take a ``conn`` from :meth:`StateStore.begin` so that, for
example, snapshots, the journal and a cursor are committed in one transaction.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError

from ..errors import ConfigError, StateBusy, StateError
from ..model import Change, Cursor, Status, utc
from . import schema as t
from .migrations import migrate
from .records import JournalEntry, Snapshot, StateUpdate
from .spool import SpoolWriter, read_spool

__all__ = [
    "JournalEntry",
    "Snapshot",
    "StateStore",
    "content_hash",
    "journal_row",
    "new_contact_key",
    "snapshot_row",
]

_CHUNK = 500
_NOTHING = object()
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


def canonical_json(value: Any) -> str:
    """A JSON-able value as compact JSON text with sorted keys (ASCII)."""
    if type(value) is dict and all(type(v) is str or v is None for v in value.values()):
        # The batch hot path: a contact's mapped fields. The same text json.dumps makes
        # (a test holds them equal), without its encoder set-up per call.
        return "{" + ",".join(
            f"{_json_str(k)}:{'null' if v is None else _json_str(v)}"
            for k, v in sorted(value.items())) + "}"
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(value: Any) -> str:
    """A stable hash of a JSON-able value (sorted keys)."""
    return text_hash(canonical_json(value))


def text_hash(text: str) -> str:
    """The hash :func:`content_hash` gives the value whose canonical JSON is ``text``."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


_keys_random = random.Random()
_key_counter = itertools.count(_keys_random.getrandbits(16))


def _reseed_keys() -> None:
    global _key_counter
    _keys_random.seed(os.urandom(16))
    _key_counter = itertools.count(_keys_random.getrandbits(16))


os.register_at_fork(after_in_child=_reseed_keys)  # a forked worker must not repeat keys


def new_contact_key() -> str:
    """A new contact key: 32 hex digits, ordered by creation time (UUIDv7-like).

    48 bits of milliseconds, a 16-bit counter, 64 random bits (a PRNG seeded from the
    OS, reseeded in a forked child: keys need to be unique, not secret). Keys made one
    after the other sort one after the other, so a run that creates a million contacts
    appends to the end of every index on the key instead of writing all over it.
    """
    ms = time.time_ns() // 1_000_000
    return (f"{ms & 0xFFFFFFFFFFFF:012x}{next(_key_counter) & 0xFFFF:04x}"
            f"{_keys_random.getrandbits(64):016x}")


@functools.lru_cache(maxsize=4096)
def status_hash(status: Status, groups: frozenset[str]) -> str:
    """The hash of one list's status and groups that a snapshot keeps."""
    return content_hash([status.value, sorted(groups)])


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


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
        except ImportError as exc:  # the URL names a database driver that is not installed
            raise ConfigError(
                f"[state] url = {_safe_url(url)!r} needs the Python module {exc.name!r}, "
                "which is not installed: for PostgreSQL write postgresql+psycopg://... and "
                "pip install 'crmsync[postgresql]'") from None
        except ArgumentError as exc:  # not a database URL SQLAlchemy knows
            raise ConfigError(
                f"[state] url = {_safe_url(url)!r} is not a database URL crmsync can use "
                f"({str(exc).splitlines()[0]}): write sqlite:///state.db or "
                "postgresql+psycopg://user@host/db") from None
        except SQLAlchemyError as exc:
            raise StateError(
                f"cannot open the state store at {_safe_url(url)}: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}; check [state] url and that the database is up"
            ) from None
        self.dialect = self.engine.dialect.name
        self._sql = _BulkSql(self.engine)
        self._last_time: tuple[object, str] = (_NOTHING, "")

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
    def resolve(self, conn: Connection, items: Sequence[tuple[str, str | None, str]], *,
                hashes: dict[str, str | None] | None = None,
                deleted: set[str] | None = None,
                create: bool = True) -> list[tuple[str, bool, str | None]]:
        """Contact keys for ``(system, record_id, email)`` items: by id, then by email.

        Returns ``(key, created, previous_email)`` per item. A known id whose email
        changed keeps its key and the email is updated (``previous_email`` says what it
        was): an email change is never a new contact. ``hashes``, when given, receives
        each contact's recorded fields hash (the mapped fields last sent), read in the
        same queries; ``deleted`` receives the keys whose deletion was sent to
        the ESP (:meth:`mark_deleted`). ``create=False`` (a dry run) writes nothing:
        new contacts get keys that are not stored, and no address moves.
        """
        by_id: dict[tuple[str, str], str] = {}
        current: dict[str, str | None] = {}
        found_hashes: dict[str, str | None] = {} if hashes is None else hashes
        pairs = [(s, r) for s, r, _ in items if r]
        for chunk in _chunks(pairs):
            systems = {s for s, _ in chunk}
            ids = {r for _, r in chunk}
            query = (select(t.id_map.c.system, t.id_map.c.record_id, t.id_map.c.contact_key,
                            t.contacts.c.email, t.contacts.c.fields_hash, t.contacts.c.deleted)
                     .select_from(t.id_map.outerjoin(
                         t.contacts, t.contacts.c.key == t.id_map.c.contact_key))
                     .where(and_(t.id_map.c.system.in_(systems),
                                 t.id_map.c.record_id.in_(ids))))
            for system, record_id, key, email, fields_hash, gone in conn.execute(query):
                by_id[(system, record_id)] = key
                current[key] = email
                found_hashes[key] = fields_hash
                if gone and deleted is not None:
                    deleted.add(key)
        # Only records not known by id are looked up by email.
        emails = {e for s, r, e in items if not r or (s, r) not in by_id}
        by_email: dict[str, str] = {}
        for chunk in _chunks(sorted(emails)):
            for key, email, fields_hash, gone in conn.execute(
                    select(t.contacts.c.key, t.contacts.c.email, t.contacts.c.fields_hash,
                           t.contacts.c.deleted)
                    .where(t.contacts.c.email.in_(chunk)).order_by(t.contacts.c.updated_at)):
                by_email[email] = key
                found_hashes[key] = fields_hash
                if gone and deleted is not None:
                    deleted.add(key)
        out: list[tuple[str, bool, str | None]] = []
        new_contacts: dict[str, str] = {}
        new_ids: dict[tuple[str, str], str] = {}
        moved: dict[str, str] = {}
        now = _now()
        for system, record_id, email in items:
            key = by_id.get((system, record_id)) if record_id else None
            created = False
            if key is not None:
                was = current.get(key)
                if was is not None and was != email:
                    moved.setdefault(key, was)
                    current[key] = email
            else:
                key = by_email.get(email)
                if key is None:
                    key = new_contact_key()
                    created = True
                    new_contacts[key] = email
                    by_email[email] = key
                if record_id:
                    by_id[(system, record_id)] = key
                    new_ids[(system, record_id)] = key
                    # a later item of this call with this id and another email is a move
                    current.setdefault(key, email)
            out.append((key, created, None))
        moved = {key: was for key, was in moved.items() if current[key] != was}
        if create:
            if new_contacts:
                stamp = self.db_time(now)
                self._sql.many(conn, "contacts", [(key, email, False, stamp)
                                                  for key, email in new_contacts.items()])
            if new_ids:
                self._sql.many(conn, "id_map", [(s, r, k) for (s, r), k in new_ids.items()])
            for key in moved:
                conn.execute(update(t.contacts).where(t.contacts.c.key == key)
                             .values(email=current[key], updated_at=now))
        if moved:
            out = [(key, created, moved.get(key)) for key, created, _ in out]
        return out

    def known(self, conn: Connection, items: Sequence[tuple[str, str | None, str]]
              ) -> list[tuple[str, str, bool] | None]:
        """The contact each deleted ``(system, record_id, email)`` record was, as ``(key,
        email crmsync holds, deletion sent)``, or ``None``: a read that never creates a
        contact nor moves an address (some CRMs report a deletion with a stand-in
        address, which is no email change).

        A record with an id is matched by that id only: a record crmsync never mapped
        is nobody it knows, whatever its address. When the contact is held by other
        records of the same system too (duplicates, a merge), the deleted record's id is
        unmapped and ``None`` returned: the person lives on in the others."""
        out: list[tuple[str, str, bool] | None] = []
        for system, record_id, email in items:
            if not record_id:
                row = conn.execute(select(t.contacts.c.key, t.contacts.c.email,
                                          t.contacts.c.deleted)
                                   .where(t.contacts.c.email == email)).first()
                out.append((row[0], row[1], bool(row[2])) if row is not None else None)
                continue
            row = conn.execute(
                select(t.id_map.c.contact_key, t.contacts.c.email, t.contacts.c.deleted)
                .select_from(t.id_map.join(t.contacts,
                                           t.contacts.c.key == t.id_map.c.contact_key))
                .where(and_(t.id_map.c.system == system,
                            t.id_map.c.record_id == record_id))).first()
            if row is None:
                out.append(None)
                continue
            others = conn.execute(select(t.id_map.c.record_id).where(and_(
                t.id_map.c.system == system, t.id_map.c.contact_key == row[0],
                t.id_map.c.record_id != record_id)).limit(1)).first()
            if others is not None:
                conn.execute(delete(t.id_map).where(and_(t.id_map.c.system == system,
                                                         t.id_map.c.record_id == record_id)))
                out.append(None)
                continue
            out.append((row[0], row[1], bool(row[2])))
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

    def set_fields_hashes(self, conn: Connection, hashes: dict[str, str],
                          views: dict[str, dict[str, str | None]] | None = None) -> None:
        """Record the mapped fields last sent per contact: their hash, and the values."""
        views = views or {}
        self.set_fields_rows(conn, [
            (h, None if views.get(k) is None else json.dumps(views[k]), k)
            for k, h in hashes.items()])

    def set_fields_rows(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """``(fields_hash, fields_json as JSON text or None, contact key)`` per contact
        (a contact whose fields were sent is not deleted at the ESP)."""
        if rows:
            now = self.db_time(_now())
            self._sql.many(conn, "fields", [(h, v, now, False, k) for h, v, k in rows])

    def mark_deleted(self, conn: Connection, keys: Sequence[str]) -> None:
        """Record that these contacts' deletion reached the ESP (``deletes = "delete"``):
        a later full read of the deleted CRM record does not delete and journal again."""
        for chunk in _chunks(list(keys)):
            conn.execute(update(t.contacts).where(t.contacts.c.key.in_(chunk))
                         .values(deleted=True, updated_at=_now()))

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
        self.put_snapshot_rows(conn, [snapshot_row(s, self.db_time) for s in items])

    def put_snapshot_rows(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Upsert snapshots given as :func:`snapshot_row` tuples (the batch hot path:
        one ``executemany`` of plain tuples, no per-row statement processing)."""
        self._sql.many(conn, "snapshots", rows)

    def db_time(self, value: datetime) -> str:
        """``value`` as text the state store takes in a raw row (and JSON can hold)."""
        last = self._last_time  # a snapshot and its journal entry share one datetime
        if last[0] is value:
            return last[1]
        text = self._sql.time(value)
        self._last_time = (value, text)
        return text
    def unsubscribed_snapshots(self, *, after: tuple[str, str] = ("", ""), limit: int = 1000
                               ) -> list[tuple[str, str, frozenset[str], str]]:
        """Every unsubscribe crmsync knows, a page at a time in (contact key, list)
        order after ``after``: ``(key, list_id, groups, current email)``."""
        s, c = t.snapshots, t.contacts
        query = (select(s.c.contact_key, s.c.list_id, s.c.groups, c.c.email)
                 .join(c, c.c.key == s.c.contact_key)
                 .where(and_(s.c.status == Status.UNSUBSCRIBED.value,
                             tuple_(s.c.contact_key, s.c.list_id) > tuple_(*after)))
                 .order_by(s.c.contact_key, s.c.list_id).limit(limit))
        with self.begin() as conn:
            return [(key, list_id, groups_of(groups), email)
                    for key, list_id, groups, email in conn.execute(query)]

    def list_holders(self, list_id: str, system: str, *, after: str = "",
                     limit: int = 1000) -> list[tuple[Snapshot, str, frozenset[str]]]:
        """Who the CRM put on ``list_id`` and crmsync still holds there, a page at a time
        in contact key order after ``after``: ``(snapshot, current email, the CRM
        system's record ids for that contact)`` for every snapshot not unsubscribed whose
        CRM status is subscribed or pending, of a contact not deleted."""
        s, c, m = t.snapshots, t.contacts, t.id_map
        query = (select(s, c.c.email).join(c, c.c.key == s.c.contact_key)
                 .where(and_(s.c.list_id == list_id, s.c.contact_key > after,
                             s.c.status != Status.UNSUBSCRIBED.value,
                             s.c.crm_status.in_([Status.SUBSCRIBED.value,
                                                 Status.PENDING.value]),
                             c.c.deleted.is_not(True)))
                 .order_by(s.c.contact_key).limit(limit))
        with self.begin() as conn:
            rows = [(_snapshot(row), row.email) for row in conn.execute(query)]
            ids: dict[str, set[str]] = {}
            for chunk in _chunks([snap.contact_key for snap, _ in rows]):
                for key, record_id in conn.execute(
                        select(m.c.contact_key, m.c.record_id)
                        .where(and_(m.c.system == system, m.c.contact_key.in_(chunk)))):
                    ids.setdefault(key, set()).add(record_id)
        return [(snap, email, frozenset(ids.get(snap.contact_key, ())))
                for snap, email in rows]

    def status_counts(self) -> dict[str, dict[str, int]]:
        with self.begin() as conn:
            rows = conn.execute(select(t.snapshots.c.list_id, t.snapshots.c.status,
                                       func.count()).group_by(t.snapshots.c.list_id,
                                                              t.snapshots.c.status)).all()
        out: dict[str, dict[str, int]] = {}
        for list_id, status, count in rows:
            out.setdefault(list_id, {})[status] = count
        return out

    # -- the unit of work: the only way a decision's state changes --------------------------
    def update_rows(self, updates: Iterable[StateUpdate]) -> list[tuple[Any, ...]]:
        """The rows that commit ``updates``, each tagged ``s`` (snapshot), ``j``
        (journal entry), ``f`` (fields last sent), ``d`` (deletion sent) or ``p``
        (post-operation to run): what :meth:`commit` executes and a commit spool holds."""
        db_time = self.db_time
        rows: list[tuple[Any, ...]] = []
        for u in updates:
            rows.extend(("s", *snapshot_row(s, db_time)) for s in u.snapshots)
            rows.extend(("j", *journal_row(j, db_time)) for j in u.journal)
            if u.fields_hash is not None:
                view = u.fields_json
                if view is None and u.fields_view is not None:
                    view = canonical_json(u.fields_view)
                rows.append(("f", u.fields_hash, view, u.key))
            if u.deleted:
                rows.append(("d", u.key))
            if u.follow_up is not None:
                rows.append(("p", u.follow_up.model_dump_json()))
        return rows

    def commit(self, conn: Connection, updates: Iterable[StateUpdate], *,
               run_id: str = "") -> None:
        """Commit acknowledged decisions in ``conn``'s transaction."""
        self._commit_rows(conn, self.update_rows(updates), run_id)

    def spool(self, path: Any) -> Spool:
        """A commit spool at ``path``: :meth:`Spool.add` what the import file being
        written will commit; :meth:`commit_spool` executes it once the file is up."""
        return Spool(self, SpoolWriter(path))

    def commit_spool(self, conn: Connection, path: Any, *, run_id: str = "") -> None:
        """Execute a commit spool in ``conn``'s transaction. A spool that cannot be read
        (a damaged disk) is a clear error: it would stop every run at recovery."""
        try:
            for frame in read_spool(path):
                self._commit_rows(conn, frame, run_id)
        except (ValueError, KeyError, IndexError) as exc:
            raise StateError(
                f"the commit spool {path} is unreadable ({exc}). Its import file was "
                f"uploaded; delete the spool and the next run diffs those contacts again "
                f"and re-sends them (an import is an idempotent upsert)") from None

    def _commit_rows(self, conn: Connection, tagged: Iterable[tuple[Any, ...]],
                     run_id: str) -> None:
        rows: dict[str, list[tuple[Any, ...]]] = {"s": [], "j": [], "f": [], "d": [], "p": []}

        def flush() -> None:
            self.put_snapshot_rows(conn, rows["s"])
            self.append_journal_rows(conn, rows["j"])
            self.set_fields_rows(conn, rows["f"])
            self.mark_deleted(conn, [key for (key,) in rows["d"]])
            self.stage(conn, "postop", [{"payload": json.loads(payload)}
                                        for (payload,) in rows["p"]],
                       run_id=run_id, batch="postop")
            for bucket in rows.values():
                bucket.clear()

        for count, row in enumerate(tagged, 1):
            rows[row[0]].append(row[1:])
            if count % 5000 == 0:
                flush()
        flush()

    # -- journal --------------------------------------------------------------------------
    def append_journal(self, conn: Connection, entries: Iterable[JournalEntry]) -> int:
        return self.append_journal_rows(conn, [journal_row(e, self.db_time) for e in entries])

    def append_journal_rows(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
        """Append journal entries given as :func:`journal_row` tuples."""
        self._sql.many(conn, "journal", rows)
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
    @staticmethod
    def new_run_id() -> str:
        """A run id: its start time (sortable), and four random hex digits."""
        return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f") + "-" + uuid.uuid4().hex[:4]

    def start_run(self, mode: str, *, full: bool, dry_run: bool) -> str:
        run_id = self.new_run_id()
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

    def outbox_retry(self, conn: Connection, row_id: int, attempts: int,
                     error: str | None) -> None:
        """A queued write failed and will be tried again (``attempts`` so far)."""
        conn.execute(update(t.outbox).where(t.outbox.c.id == row_id).values(
            attempts=attempts, last_error=error))

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


def groups_text(groups: frozenset[str]) -> str:
    """A snapshot's groups as stored: a JSON array of names, sorted."""
    return "[" + ",".join(map(_json_str, sorted(groups))) + "]" if groups else "[]"


def groups_of(value: Any) -> frozenset[str]:
    """Stored groups back (a JSON array: a list from the driver, or its text)."""
    if isinstance(value, str):
        value = json.loads(value)
    return frozenset(value or ())


def snapshot_row(s: Snapshot, db_time: Any) -> tuple[Any, ...]:
    """A snapshot as the raw row :meth:`StateStore.put_snapshot_rows` takes."""
    return (s.contact_key, s.list_id, s.status.value, groups_text(s.groups),
            s.crm_status.value if s.crm_status else None, s.hash, db_time(s.changed_at),
            s.source)


def journal_row(e: JournalEntry, db_time: Any) -> tuple[Any, ...]:
    """A journal entry as the raw row :meth:`StateStore.append_journal_rows` takes."""
    return (db_time(e.at or _now()), e.run_id, e.contact_key, e.email, e.list_id,
            e.old_status, e.new_status, e.applied_to, e.source, e.reason, e.event_id)


def _sqlite_time(value: datetime) -> str:
    return value.isoformat(" ", "microseconds")[:26]


class _BulkSql:
    """Plain SQL for the few statements a batch run executes per contact.

    SQLAlchemy Core builds and processes parameters per row; for a million contacts
    that cost more than the database. These statements are written once per dialect
    (identifiers quoted by the dialect, the driver's placeholder) and executed with
    ``exec_driver_sql`` and a list of tuples: one ``executemany`` per chunk.
    """

    _STATEMENTS = {
        "snapshots": (t.snapshots, ("contact_key", "list_id", "status", "groups", "crm_status",
                                    "hash", "changed_at", "source"),
                      "ON CONFLICT ({contact_key}, {list_id}) DO UPDATE SET {status} = "
                      "excluded.{status}, {groups} = excluded.{groups}, {crm_status} = "
                      "excluded.{crm_status}, {hash} = excluded.{hash}, {changed_at} = "
                      "excluded.{changed_at}, {source} = excluded.{source}"),
        "journal": (t.journal, ("at", "run_id", "contact_key", "email", "list_id", "old_status",
                                "new_status", "applied_to", "source", "reason", "event_id"), ""),
        "contacts": (t.contacts, ("key", "email", "deleted", "updated_at"), ""),
        "id_map": (t.id_map, ("system", "record_id", "contact_key"),
                   "ON CONFLICT ({system}, {record_id}) DO NOTHING"),
    }

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        quote = dialect.identifier_preparer.quote
        mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
        if mark is None:  # pragma: no cover - every supported driver is one of these
            raise StateError(f"unsupported DB-API paramstyle {dialect.paramstyle!r}")
        self.sql: dict[str, str] = {}
        for name, (table, columns, tail) in self._STATEMENTS.items():
            names = {c: quote(c) for c in table.c.keys()}  # noqa: SIM118 (a ColumnCollection)
            self.sql[name] = (f"INSERT INTO {quote(table.name)} "
                              f"({', '.join(names[c] for c in columns)}) "
                              f"VALUES ({', '.join([mark] * len(columns))}) "
                              + tail.format(**names)).strip()
        c = {name: quote(name) for name in t.contacts.c.keys()}  # noqa: SIM118
        self.sql["fields"] = (f"UPDATE {quote(t.contacts.name)} SET {c['fields_hash']} = {mark}, "
                              f"{c['fields_json']} = {mark}, {c['updated_at']} = {mark}, "
                              f"{c['deleted']} = {mark} WHERE {c['key']} = {mark}")
        # The DateTime column's own conversion (SQLite stores text), so rows read back
        # exactly as rows SQLAlchemy wrote.
        # SQLite stores a DateTime as the text SQLAlchemy's processor makes: the wall
        # clock with six decimals and no offset, which is what isoformat gives up to
        # the offset (the same text, a few times faster; a test holds them equal).
        # PostgreSQL casts ISO text to timestamptz. Text also keeps spooled rows JSON.
        self.time: Callable[[datetime], str] = (
            _sqlite_time if dialect.name == "sqlite" else datetime.isoformat)

    def many(self, conn: Connection, name: str, rows: Sequence[tuple[Any, ...]]) -> None:
        sql = self.sql[name]
        for start in range(0, len(rows), 2000):
            conn.exec_driver_sql(sql, list(rows[start:start + 2000]))


def _snapshot(row: Any) -> Snapshot:
    return Snapshot(
        contact_key=row.contact_key, list_id=row.list_id, status=Status(row.status),
        groups=groups_of(row.groups),
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


class Spool:
    """A commit spool being written (see :meth:`StateStore.spool`)."""

    def __init__(self, store: StateStore, writer: SpoolWriter) -> None:
        self._store = store
        self._writer = writer

    def add(self, updates: Iterable[StateUpdate]) -> None:
        self._writer.write(self._store.update_rows(updates))

    def close(self) -> None:
        self._writer.close()
