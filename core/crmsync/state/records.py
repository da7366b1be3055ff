"""The typed records the state store takes and gives: the engine never sees a row.

A :class:`StateUpdate` is what one decision commits once the receiving side has
acknowledged it (snapshots, journal entries, the fields last sent, a deletion, the
post-operations that must follow). The store turns it into rows, in the database or in
a commit spool (:mod:`crmsync.state.spool`); the row layouts are the store's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from ..model import Change, Status

__all__ = ["FileStatus", "JournalEntry", "QueueStatus", "Snapshot", "StateUpdate"]


class QueueStatus(StrEnum):
    """Where a queued item (inbox event, outbox write) stands."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


class FileStatus(StrEnum):
    """How far a file exchanged with the file space got.

    Outgoing import files: ``writing`` → ``staged`` (written, its commit spooled) →
    ``uploaded`` → ``committed``; ``abandoned`` when a killed run left it half written.
    Incoming exports: ``staged`` (read into the queue) → ``applied`` → ``archived``;
    ``changed`` when it changed after it was read (read again next run).
    """

    WRITING = "writing"
    STAGED = "staged"
    UPLOADED = "uploaded"
    COMMITTED = "committed"
    ABANDONED = "abandoned"
    APPLIED = "applied"
    ARCHIVED = "archived"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(slots=True)
class StateUpdate:
    """What one acknowledged decision changes in the state store, all of it or none.

    ``fields_hash`` / ``fields_view``: the mapped fields as last sent (``None``: left as
    they are). ``deleted``: the contact's deletion reached the ESP. ``follow_up``: the
    status changes whose post-operations must run (queued in the same transaction).
    """

    key: str
    snapshots: list[Snapshot] = field(default_factory=list)
    journal: list[JournalEntry] = field(default_factory=list)
    fields_hash: str | None = None
    fields_view: dict[str, str | None] | None = None
    deleted: bool = False
    follow_up: Change | None = None
    #: ``fields_view`` as canonical JSON text, when the caller already made it
    fields_json: str | None = None
