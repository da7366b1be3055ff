"""The state store (SQLAlchemy Core; SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from .store import (
    JournalEntry,
    Snapshot,
    StateStore,
    content_hash,
    journal_row,
    new_contact_key,
    snapshot_row,
    status_hash,
)

__all__ = [
    "JournalEntry",
    "Snapshot",
    "StateStore",
    "content_hash",
    "journal_row",
    "new_contact_key",
    "snapshot_row",
    "status_hash",
]
