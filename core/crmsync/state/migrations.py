"""Versioned schema migrations.

Each migration is a function run once, in order, inside a transaction; the version
reached is stored in ``crmsync_schema_version``. A database at a newer version than
this code knows is refused (an older crmsync must not write to it).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

from sqlalchemy import Connection, Engine, inspect, select, text

from ..errors import StateError
from .schema import (
    contacts,
    inbox,
    journal_seals,
    metadata,
    schema_version,
    snapshots,
    suppressions,
)

__all__ = ["MIGRATIONS", "current_version", "migrate"]


def _v1_initial(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


def _v2_inbox_heads_index(conn: Connection) -> None:
    # the worker looks up each contact's oldest pending event (schema.py declares the
    # index, so a database created at v1 by this code already has it)
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS ix_crmsync_inbox_contact "
                      f"ON {inbox.name} (contact, status, id)"))


def _v3_contact_fields(conn: Connection) -> None:
    # the mapped fields as last sent, so a field change coming back from the ESP can be
    # written to the CRM without being echoed to the ESP again
    if "fields_json" not in {c["name"] for c in inspect(conn).get_columns(contacts.name)}:
        kind = "JSONB" if conn.dialect.name == "postgresql" else "JSON"
        conn.execute(text(f"ALTER TABLE {contacts.name} ADD COLUMN fields_json {kind}"))


def _v4_groups_json(conn: Connection) -> None:
    # A snapshot's groups as a JSON array. They were comma-joined text, or, for a name
    # holding a comma, a marker character and a JSON array: every row is rewritten,
    # then (PostgreSQL) the column becomes JSONB. A database created at v1 by this
    # code already has the JSON column and no rows.
    table = snapshots.name
    rows = conn.execute(text(f'SELECT contact_key, list_id, "groups" FROM {table}')).all()
    for key, list_id, raw in rows:
        if isinstance(raw, str) and not raw.startswith("["):
            names = (json.loads(raw[1:]) if raw.startswith(_OLD_GROUPS_JSON)
                     else [name for name in raw.split(",") if name])
            conn.execute(text(f'UPDATE {table} SET "groups" = :groups '
                              f"WHERE contact_key = :key AND list_id = :list"),
                         {"groups": json.dumps(sorted(names)), "key": key, "list": list_id})
        elif isinstance(raw, str) and raw.startswith("["):
            # "[beta],news" and "[1]" were comma-joined names, never JSON, then
            try:
                value = json.loads(raw)
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            except ValueError:
                ok = False
            if not ok:
                names = [name for name in raw.split(",") if name]
                conn.execute(text(f'UPDATE {table} SET "groups" = :groups '
                                  f"WHERE contact_key = :key AND list_id = :list"),
                             {"groups": json.dumps(sorted(names)), "key": key,
                              "list": list_id})
    if conn.dialect.name == "postgresql":
        kind = conn.execute(text(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = :t AND column_name = 'groups'"), {"t": table}).scalar()
        if kind == "text":
            conn.execute(text(f'ALTER TABLE {table} ALTER COLUMN "groups" DROP DEFAULT'))
            conn.execute(text(f'ALTER TABLE {table} ALTER COLUMN "groups" TYPE JSONB '
                              f'USING "groups"::jsonb'))


def _v5_consent_ledger(conn: Connection) -> None:
    # the journal's seals (hash chain) and the erased addresses' suppressions (ledger.py)
    journal_seals.create(conn, checkfirst=True)
    suppressions.create(conn, checkfirst=True)


_OLD_GROUPS_JSON = "\x1e"  # the marker of a JSON array in the text form (before v4)

MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1_initial, _v2_inbox_heads_index, _v3_contact_fields, _v4_groups_json,
    _v5_consent_ledger]


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table(schema_version.name):
        return 0
    row = conn.execute(select(schema_version.c.version)).first()
    return int(row[0]) if row else 0


def migrate(engine: Engine) -> int:
    """Bring the schema up to date; return the version reached.

    Two processes starting on a new state store at once (``serve`` and ``status``)
    must not both create it: the migration holds a lock — a transaction-scoped
    advisory lock on PostgreSQL, a file lock beside a SQLite database.
    """
    with _migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7461706163686521)"))
        version = current_version(conn)
        if version > len(MIGRATIONS):
            raise StateError(
                f"the state store is at schema version {version}, newer than this crmsync "
                f"({len(MIGRATIONS)}): upgrade crmsync, or point [state] url at another database"
            )
        for number in range(version, len(MIGRATIONS)):
            MIGRATIONS[number](conn)
        if version != len(MIGRATIONS):
            conn.execute(schema_version.delete())
            conn.execute(schema_version.insert().values(version=len(MIGRATIONS)))
        return len(MIGRATIONS)


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(f"{database}.migrate.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield
