"""The state store: cursors, identities, snapshots, journal, runs, inbox, outbox, files.

One schema on SQLAlchemy Core: a SQLite file by default, PostgreSQL by URL. The store
is small repositories over one engine — :class:`~.identities.Identities`,
:class:`~.snapshots.SnapshotsAndJournal`, :class:`~.queues.Queues`,
:class:`~.runs.Runs` — and one unit of work: :meth:`StateStore.commit` (or a commit
spool, :meth:`StateStore.commit_spool`) is how a decision's state changes. Methods that
must happen together take a ``conn`` from :meth:`StateStore.begin` so that, for
example, snapshots, the journal and a cursor are committed in one transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import ArgumentError, DisconnectionError, SQLAlchemyError

from ..errors import ConfigError, StateBusy, StateError
from .identities import Identities
from .migrations import migrate
from .queues import Queues
from .records import JournalEntry, Snapshot, StateUpdate
from .rows import (
    _NOTHING,
    BulkSql,
    canonical_json,
    content_hash,
    groups_of,
    groups_text,
    journal_row,
    new_contact_key,
    snapshot_row,
    status_hash,
    text_hash,
)
from .runs import Runs
from .snapshots import SnapshotsAndJournal
from .spool import SpoolWriter, read_spool

__all__ = [
    "JournalEntry",
    "Snapshot",
    "StateStore",
    "canonical_json",
    "content_hash",
    "groups_of",
    "groups_text",
    "journal_row",
    "new_contact_key",
    "snapshot_row",
    "status_hash",
    "text_hash",
]


class StateStore(Identities, SnapshotsAndJournal, Queues, Runs):
    """The state store behind one SQLAlchemy engine."""

    def __init__(self, url: str, *, echo: bool = False, schema: str | None = None) -> None:
        """``schema`` (PostgreSQL): keep every table in that schema, created if need be
        — one pair of a many-pairs deployment, beside the others in one database."""
        self.url = url
        self.schema = schema if schema and not url.startswith("sqlite") else None
        try:
            if url.startswith("sqlite"):
                self.engine: Engine = create_engine(
                    url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                args = _server_connect_args(url)
                if self.schema:
                    _create_schema(url, self.schema)
                    # only the pair's schema: a table it lacks is an error, never another
                    # pair's (or the default pair's) table found further down the path
                    args["options"] = f"-c search_path={_quote_ident(self.schema)}"
                self.engine = create_engine(url, echo=echo, connect_args=args)
                _ping_when_idle(self.engine, PING_IDLE_S)
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
        self._joined = threading.local()
        self._sql = BulkSql(self.engine)
        self._last_time: tuple[object, str] = (_NOTHING, "")

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def exclusive(self, name: str, *, wait_s: float = 0.0,
                  shared: bool = False) -> Iterator[None]:
        """Hold the named lock for the block, or raise ``StateError`` if another process
        holds it: two batch runs on one state store would send the same changes twice.

        PostgreSQL: a session advisory lock. SQLite: an exclusive lock on a file beside
        the database. Either is released when the holder dies, so a killed run never
        leaves a stale lock behind. ``wait_s``: how long to keep trying for it.
        ``shared`` (PostgreSQL): any number of shared holders, none while someone holds
        it exclusively (``crmsync worker`` processes share "batch"; a batch run excludes
        them). On SQLite a shared hold is an exclusive one, as before.
        """
        deadline = time.monotonic() + wait_s
        busy = (f"another crmsync process holds the {name!r} lock on this state store "
                f"({_safe_url(self.url)}): wait for it to finish, or check `crmsync status`")
        if self.dialect == "postgresql":
            scope = f"{self.schema}:" if self.schema else ""
            key = int(hashlib.sha256(f"crmsync:{scope}{name}".encode()).hexdigest()[:15], 16)
            kind = "_shared" if shared else ""
            # autocommit: a session lock needs no transaction, and each BEGIN / COMMIT
            # around the lock and the unlock was a round trip (a worker takes the shared
            # "decisions" lock for every event)
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                while True:
                    got = conn.execute(text(f"SELECT pg_try_advisory_lock{kind}(:k)"),
                                       {"k": key}).scalar()
                    if got:
                        break
                    if time.monotonic() >= deadline:
                        raise StateBusy(busy)
                    time.sleep(0.2)
                try:
                    yield
                finally:
                    conn.execute(text(f"SELECT pg_advisory_unlock{kind}(:k)"), {"k": key})
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
    def contact_locks(self, emails: Iterable[str], *,
                      one_transaction: bool = False) -> Iterator[None]:
        """Hold one lock per contact (by address) for the block: two writers of the
        same snapshots — a batch run's page, a ``crmsync worker``'s event — never decide
        on the same contact at once, while different contacts go side by side.

        PostgreSQL: transaction-scoped advisory locks on a connection of their own,
        taken in key order in one statement (two holders cannot deadlock), released when
        the block ends or its holder dies. SQLite: nothing (one writer at a time holds
        the store-wide "batch" lock there, as before).

        ``one_transaction`` (PostgreSQL): every :meth:`begin` of this thread inside the
        block joins the locks' transaction instead of taking a connection and a
        transaction of its own, so a decision (read, then commit, with the vendor's
        write between) is one transaction that commits, or rolls back, with its locks
        (a real-time event: three checkouts and commits were one each).
        """
        keys = sorted({contact_key_lock(email, self.schema) for email in emails if email})
        if self.dialect != "postgresql" or not keys:
            yield
            return
        if getattr(self._joined, "conn", None) is not None:
            raise RuntimeError("contact_locks inside one_transaction contact_locks")
        with self.engine.connect() as conn, conn.begin():
            conn.execute(text(
                "SELECT count(pg_advisory_xact_lock(k)) FROM "
                "(SELECT k FROM unnest(CAST(:keys AS bigint[])) AS k ORDER BY k) AS ordered"),
                {"keys": keys})
            if not one_transaction:
                yield
                return
            self._joined.conn = conn
            try:
                yield
            finally:
                self._joined.conn = None

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

#: A pooled connection unused for longer than this is pinged before it is handed out.
PING_IDLE_S = 1.0


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """``pool_pre_ping`` for connections that sat in the pool more than ``idle_s``.

    ``pool_pre_ping`` pings on every checkout: a real-time event takes half a dozen
    connections from the pool in a row, so it was as many round trips more. A
    connection given back a moment ago is used as is; if the server went away in that
    moment, its first statement fails, SQLAlchemy drops the whole pool (a disconnect
    error) and the event is tried again, as with any failure of the database."""

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_conn: Any, record: Any) -> None:
        record.info["crmsync_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("crmsync_idle_since")
        if since is not None and time.monotonic() - since <= idle_s:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(str(exc)) from exc  # the pool reconnects
        if not alive:
            raise DisconnectionError("the state store's connection is gone")


def contact_key_lock(email: str, schema: str | None = None) -> int:
    """The advisory lock key of one contact (a signed 60-bit int of its address and, for
    a pair with its own schema, of that schema: pairs never wait for each other)."""
    scope = f"{schema}:" if schema else ""
    digest = hashlib.sha256(
        f"crmsync:{scope}contact:{email.strip().lower()}".encode()).hexdigest()
    return int(digest[:15], 16)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create_schema(url: str, schema: str) -> None:
    """Create a pair's schema before its engine's first connection (which fixes the
    dialect's default schema), with a throw-away connection."""
    from sqlalchemy.pool import NullPool

    bootstrap = create_engine(url, poolclass=NullPool, connect_args=_server_connect_args(url))
    try:
        with bootstrap.begin() as conn:
            # two pairs' first processes at once: CREATE SCHEMA IF NOT EXISTS can still
            # collide on the catalog's unique index, so serialise it
            conn.execute(text("SELECT pg_advisory_xact_lock(7461706163686522)"))
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(schema)}"))
    finally:
        bootstrap.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _server_connect_args(url: str) -> dict[str, Any]:
    """psycopg: no server-side prepared statements. psycopg prepares a statement on its
    fifth execution, and PostgreSQL may then keep a generic plan made when the tables
    were small: during a first full export the identity lookup's plan stayed a scan of
    a table growing to every contact, and took half the run. Each statement of a page
    now carries thousands of rows, so planning it every time costs nothing measurable
    (and PgBouncer in transaction mode needs no prepared statements either)."""
    return {"prepare_threshold": None} if url.startswith("postgresql+psycopg") else {}


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

