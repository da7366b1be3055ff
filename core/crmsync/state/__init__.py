"""The state store (SQLAlchemy Core; SQLite by default, PostgreSQL by URL).

The engine hands it typed records (:class:`StateUpdate`, :class:`Snapshot`,
:class:`JournalEntry`); the row layouts, the commit spool and the queues are its own.
"""

from __future__ import annotations

from .records import FileStatus, JournalEntry, QueueStatus, Snapshot, StateUpdate
from .store import (
    StateStore,
    canonical_json,
    content_hash,
    journal_row,
    new_contact_key,
    snapshot_row,
    status_hash,
    text_hash,
)

__all__ = [
    "FileStatus",
    "JournalEntry",
    "QueueStatus",
    "Snapshot",
    "StateStore",
    "StateUpdate",
    "canonical_json",
    "content_hash",
    "journal_row",
    "new_contact_key",
    "snapshot_row",
    "status_hash",
    "text_hash",
]
