"""Snapshots and the journal: what crmsync believes per contact and list, and every change of it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    func,
    or_,
    select,
    tuple_,
)

from ..model import Status
from . import schema as t
from .base import StoreBase
from .records import JournalEntry, Snapshot
from .rows import groups_of, journal_row, snapshot_of, snapshot_row


class SnapshotsAndJournal(StoreBase):
    """Snapshots per contact and list, and the append-only journal."""

    # -- snapshots ------------------------------------------------------------------------
    def snapshots(self, conn: Connection, keys: Sequence[str]) -> dict[tuple[str, str], Snapshot]:
        found: dict[tuple[str, str], Snapshot] = {}
        with self._by_index(conn, len(keys)):
            for chunk in self._batches(list(keys)):
                for row in conn.execute(select(t.snapshots).where(
                        self._among(t.snapshots.c.contact_key, chunk))):
                    found[(row.contact_key, row.list_id)] = snapshot_of(row)
        return found

    def put_snapshots(self, conn: Connection, items: Iterable[Snapshot]) -> None:
        self.put_snapshot_rows(conn, [snapshot_row(s, self.db_time) for s in items])

    def put_snapshot_rows(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Upsert snapshots given as :func:`snapshot_row` tuples (the batch hot path:
        plain tuples, no per-row statement processing; see :class:`BulkSql`)."""
        self._sql.many(conn, "snapshots", rows)


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
            rows = [(snapshot_of(row), row.email) for row in conn.execute(query)]
            ids: dict[str, set[str]] = {}
            for chunk in self._batches([snap.contact_key for snap, _ in rows]):
                for key, record_id in conn.execute(
                        select(m.c.contact_key, m.c.record_id)
                        .where(and_(m.c.system == system, self._among(m.c.contact_key, chunk)))):
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

