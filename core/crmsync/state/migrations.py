"""Versioned schema migrations.

Each migration is a function run once, in order, inside a transaction; the version
reached is stored in ``crmsync_schema_version``. A database at a newer version than
this code knows is refused (an older crmsync must not write to it).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, inspect, select, text

from ..errors import StateError
from .schema import contacts, inbox, journal_seals, metadata, schema_version, suppressions

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


def _v4_consent_ledger(conn: Connection) -> None:
    # the journal's seals (hash chain) and the erased addresses' suppressions (ledger.py)
    journal_seals.create(conn, checkfirst=True)
    suppressions.create(conn, checkfirst=True)


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1_initial, _v2_inbox_heads_index, _v3_contact_fields, _v4_consent_ledger]


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table(schema_version.name):
        return 0
    row = conn.execute(select(schema_version.c.version)).first()
    return int(row[0]) if row else 0


def migrate(engine: Engine) -> int:
    """Bring the schema up to date; return the version reached."""
    with engine.begin() as conn:
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
