"""The state store's row formats and the helpers every repository shares.

Rows the batch hot path writes are built here as plain tuples (:func:`snapshot_row`,
:func:`journal_row`) and executed by :class:`BulkSql`, a chunk at a time (an
``executemany`` on SQLite, one statement over arrays on PostgreSQL); readers turn rows
back into records (:func:`snapshot_of`).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
)

from ..errors import StateError
from ..model import Status, utc
from . import schema as t
from .records import JournalEntry, Snapshot

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


class BulkSql:
    """Plain SQL for the few statements a batch run executes per contact.

    SQLAlchemy Core builds and processes parameters per row; for a million contacts
    that cost more than the database. These statements are written once per dialect
    (identifiers quoted by the dialect, the driver's placeholder) and executed with
    ``exec_driver_sql``:

    - SQLite: a list of tuples, one ``executemany`` per chunk (an in-process call per
      row is what SQLite is fast at);
    - PostgreSQL: one statement per chunk whose rows arrive as one array per column
      (``INSERT ... SELECT ... FROM unnest(...)``, ``UPDATE ... FROM unnest(...)``).
      psycopg's ``executemany`` pipelines, but the server still parses, binds and
      executes one statement per row: a page of 2,000 contacts was five times 2,000
      statements; it is now five.

    Either way the rows are applied as if one after the other: an upsert given the
    same key twice keeps the last row, ``DO NOTHING`` the first, the journal keeps
    their order.
    """

    # name: (table, columns, tail, the key whose last row wins, or None)
    _STATEMENTS: dict[str, tuple[Any, tuple[str, ...], str, tuple[int, ...] | None]] = {
        "snapshots": (t.snapshots, ("contact_key", "list_id", "status", "groups", "crm_status",
                                    "hash", "changed_at", "source"),
                      "ON CONFLICT ({contact_key}, {list_id}) DO UPDATE SET {status} = "
                      "excluded.{status}, {groups} = excluded.{groups}, {crm_status} = "
                      "excluded.{crm_status}, {hash} = excluded.{hash}, {changed_at} = "
                      "excluded.{changed_at}, {source} = excluded.{source}", (0, 1)),
        "journal": (t.journal, ("at", "run_id", "contact_key", "email", "list_id", "old_status",
                                "new_status", "applied_to", "source", "reason", "event_id"),
                    "", None),
        "contacts": (t.contacts, ("key", "email", "deleted", "updated_at"), "", None),
        "id_map": (t.id_map, ("system", "record_id", "contact_key"),
                   "ON CONFLICT ({system}, {record_id}) DO NOTHING", None),
        "seals": (t.journal_seals, ("journal_id", "digest", "prev_hash", "hash", "sealed_at"),
                  "", None),
    }
    # UPDATE contacts SET ... WHERE key = ...: the fields last sent, the key last
    _FIELDS = ("fields_hash", "fields_json", "updated_at", "deleted", "key")

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        quote = dialect.identifier_preparer.quote
        mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
        if mark is None:  # pragma: no cover - every supported driver is one of these
            raise StateError(f"unsupported DB-API paramstyle {dialect.paramstyle!r}")
        self.arrays = dialect.name == "postgresql"
        self.sql: dict[str, str] = {}
        self.last_wins: dict[str, tuple[int, ...]] = {"fields": (4,)}
        for name, (table, columns, tail, key) in self._STATEMENTS.items():
            names = {c: quote(c) for c in table.c.keys()}  # noqa: SIM118 (a ColumnCollection)
            listed = ", ".join(names[c] for c in columns)
            if self.arrays:
                # WITH ORDINALITY ... ORDER BY: rows inserted in the arrays' order (the
                # journal's ids follow it; DO NOTHING keeps the first of a repeated key)
                rows = (f"SELECT {listed} FROM {self._unnest(table, columns, dialect)} "
                        f"WITH ORDINALITY AS v({listed}, crmsync_n) ORDER BY crmsync_n")
            else:
                rows = f"VALUES ({', '.join([mark] * len(columns))})"
            self.sql[name] = (f"INSERT INTO {quote(table.name)} ({listed}) {rows} "
                              + tail.format(**names)).strip()
            if key is not None:
                self.last_wins[name] = key
        c = {name: quote(name) for name in t.contacts.c.keys()}  # noqa: SIM118
        sets = ", ".join(f"{c[name]} = {'v.' + c[name] if self.arrays else mark}"
                         for name in self._FIELDS[:-1])
        if self.arrays:
            self.sql["fields"] = (
                f"UPDATE {quote(t.contacts.name)} SET {sets} FROM "
                f"{self._unnest(t.contacts, self._FIELDS, dialect)} AS "
                f"v({', '.join(c[name] for name in self._FIELDS)}) "
                f"WHERE {quote(t.contacts.name)}.{c['key']} = v.{c['key']}")
        else:
            self.sql["fields"] = (f"UPDATE {quote(t.contacts.name)} SET {sets} "
                                  f"WHERE {c['key']} = {mark}")
        # The DateTime column's own conversion (SQLite stores text), so rows read back
        # exactly as rows SQLAlchemy wrote.
        # SQLite stores a DateTime as the text SQLAlchemy's processor makes: the wall
        # clock with six decimals and no offset, which is what isoformat gives up to
        # the offset (the same text, a few times faster; a test holds them equal).
        # PostgreSQL casts ISO text to timestamptz. Text also keeps spooled rows JSON.
        self.time: Callable[[datetime], str] = (
            _sqlite_time if dialect.name == "sqlite" else datetime.isoformat)

    @staticmethod
    def _unnest(table: Any, columns: Sequence[str], dialect: Any) -> str:
        """``unnest(%s::<type>[], ...)``: one array parameter per column, typed as the
        column is (JSON and timestamps arrive as text and are cast by the server)."""
        return "unnest(" + ", ".join(
            f"%s::{table.c[name].type.compile(dialect=dialect)}[]" for name in columns) + ")"

    def many(self, conn: Connection, name: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Execute the statement ``name`` for each row, in order."""
        sql = self.sql[name]
        if not self.arrays:
            for start in range(0, len(rows), 2000):
                conn.exec_driver_sql(sql, list(rows[start:start + 2000]))
            return
        key = self.last_wins.get(name)
        if key is not None:
            rows = _last_per_key(rows, key)
        for start in range(0, len(rows), _ARRAY_CHUNK):
            columns = zip(*rows[start:start + _ARRAY_CHUNK], strict=True)
            conn.exec_driver_sql(sql, tuple(
                "{" + ",".join(map(_array_element, column)) + "}" for column in columns))


_ARRAY_CHUNK = 10_000


def _array_element(value: Any) -> str:
    """One value in PostgreSQL's array literal (the text the statement casts to the
    column's array type). Written here rather than by psycopg's list adapter, whose
    per-value Python cost was a fifth of a 100k export."""
    if value is None:
        return "NULL"
    if value is True or value is False:
        return "t" if value else "f"
    text = value if value.__class__ is str else str(value)
    if '"' in text or "\\" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text + '"'


def _last_per_key(rows: Sequence[tuple[Any, ...]], key: tuple[int, ...]
                  ) -> Sequence[tuple[Any, ...]]:
    """``rows`` where a key repeats only its last row, in the order of the last rows (an
    upsert or UPDATE may not touch one row twice in a statement; applied one after
    the other, the last would win). ``rows`` as they are when no key repeats."""
    if len(key) == 1:
        (i,) = key
        last = {row[i]: n for n, row in enumerate(rows)}
    else:
        last = {tuple(row[i] for i in key): n for n, row in enumerate(rows)}
    if len(last) == len(rows):
        return rows
    return [rows[n] for n in sorted(last.values())]


def snapshot_of(row: Any) -> Snapshot:
    return Snapshot(
        contact_key=row.contact_key, list_id=row.list_id, status=Status(row.status),
        groups=groups_of(row.groups),
        crm_status=Status(row.crm_status) if row.crm_status else None, hash=row.hash,
        changed_at=utc(row.changed_at), source=row.source)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]

