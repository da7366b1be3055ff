"""Copy a SQLite state store into an empty PostgreSQL one (``crmsync migrate-state``).

Every table of the schema, in chunks, in primary-key order, through the same SQLAlchemy
tables the store uses (so values are converted as the store converts them: JSON,
timestamps in UTC, booleans). The copy holds both stores' ``batch`` and ``serve``
locks, so no run and no ``crmsync serve`` writes to either meanwhile; it reads the
source in one transaction and writes the target in one transaction, which commits only
once every table's row count in the target equals the source's. A failed copy leaves
the target as empty as it was.

Journal ids (and inbox, outbox, dead-letter ids) are kept, so the consent journal's
seals still verify with the same ledger key, and each id sequence continues after the
largest copied id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import DateTime, Table, func, select, text

from ..errors import ConfigError, StateError
from . import schema as t

if TYPE_CHECKING:
    from .store import StateStore

__all__ = ["TABLES", "copy_store"]

# Every table but the schema version (each store has its own, at the same version).
TABLES: tuple[Table, ...] = tuple(table for table in t.metadata.sorted_tables
                                  if table is not t.schema_version)


def copy_store(source: StateStore, target: StateStore, *, chunk: int = 5000,
               on_table: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy ``source`` (SQLite) into ``target`` (PostgreSQL, empty); return the rows
    copied per table. ``on_table(name, rows)`` is called as each table is done.

    Raises ``ConfigError`` for a source that is not SQLite, a target that is not
    PostgreSQL or holds data; ``StateBusy`` when a run or ``crmsync serve`` holds
    either store; ``StateError`` if the counts differ (nothing is committed then)."""
    if source.dialect != "sqlite":
        raise ConfigError(
            f"migrate-state copies a SQLite state store, and [state] url is already "
            f"{source.dialect}: move a PostgreSQL database with pg_dump / pg_restore")
    if target.dialect != "postgresql":
        raise ConfigError("migrate-state --to takes a PostgreSQL URL: "
                          "postgresql+psycopg://user@host/database")
    with source.exclusive("batch"), source.exclusive("serve"), \
            target.exclusive("batch"), target.exclusive("serve"), \
            target.begin() as out:
        holding = [table.name for table in TABLES
                   if out.execute(select(text("1")).select_from(table).limit(1)).first()]
        if holding:
            raise ConfigError(
                f"the target database already holds crmsync state ({', '.join(holding)}): "
                "migrate-state copies into an empty database only; create a new one "
                "(createdb) and pass its URL to --to")
        counts: dict[str, int] = {}
        with source.begin() as src:  # one snapshot of the source
            for table in TABLES:
                copied = 0
                for rows in _chunks(src, table, chunk):
                    out.execute(table.insert(), rows)
                    copied += len(rows)
                counts[table.name] = copied
                if on_table is not None:
                    on_table(table.name, copied)
            expected = {table.name: int(src.execute(
                select(func.count()).select_from(table)).scalar_one()) for table in TABLES}
        for table in TABLES:
            _continue_ids(out, table)
        landed = {table.name: int(out.execute(
            select(func.count()).select_from(table)).scalar_one()) for table in TABLES}
        if landed != expected or counts != expected:
            wrong = ", ".join(f"{name} {landed[name]} of {expected[name]}"
                              for name in expected if landed[name] != expected[name])
            raise StateError(f"the copy's row counts differ ({wrong or counts}): nothing "
                             "was committed to the target; run migrate-state again")
    return counts


def _chunks(conn: Any, table: Table, size: int) -> Iterator[list[dict[str, Any]]]:
    """The table's rows as dicts, ``size`` at a time, in primary-key order. SQLite
    hands back a timestamp without its zone: the store writes UTC, so it is UTC (a
    naive value given to PostgreSQL would be read in the server's time zone)."""
    times = [c.name for c in table.columns if isinstance(c.type, DateTime)]
    result = conn.execution_options(yield_per=size).execute(
        select(table).order_by(*table.primary_key.columns))
    for part in result.partitions(size):
        rows = [dict(row._mapping) for row in part]
        for row in rows:
            for name in times:
                value = row[name]
                if isinstance(value, datetime) and value.tzinfo is None:
                    row[name] = value.replace(tzinfo=UTC)
        yield rows


def _continue_ids(conn: Any, table: Table) -> None:
    """Move an id sequence past the largest id copied (ids were copied as they were)."""
    for column in table.primary_key.columns:
        if column.autoincrement is True:
            conn.execute(text(
                f"SELECT setval(pg_get_serial_sequence(:table, :column), "
                f"COALESCE((SELECT max({column.name}) FROM {table.name}), 0) + 1, false)"),
                {"table": table.name, "column": column.name})
