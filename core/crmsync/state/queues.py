"""Queues: the outbox (writes staged for a side), the inbox (received events) and dead letters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from ..errors import StateError
from ..model import Change
from . import schema as t
from .base import StoreBase
from .records import QueueStatus
from .rows import _aware, _chunks, _now

#: What :meth:`Queues.inbox_put_many` calls in its transaction with the stored rows.
OnStored = Callable[[Connection, list[dict[str, Any]]], None]


class Queues(StoreBase):
    """The outbox, the inbox and the dead letters."""

    # -- outbox ---------------------------------------------------------------------------
    def stage(self, conn: Connection, target: str, items: Iterable[dict[str, Any]], *,
              run_id: str = "", batch: str = "") -> int:
        now = _now()
        rows = [{"target": target, "run_id": run_id, "batch": batch,
                 "contact_key": item.get("contact_key", ""), "payload": item["payload"],
                 "snapshot": item.get("snapshot"), "status": QueueStatus.PENDING, "attempts": 0,
                 "created_at": now} for item in items]
        for chunk in _chunks(rows):
            conn.execute(t.outbox.insert(), chunk)
        return len(rows)

    def pending(self, target: str, *, batch: str | None = None, limit: int = 1000,
                after_id: int = 0, conn: Connection | None = None) -> list[dict[str, Any]]:
        query = select(t.outbox).where(and_(t.outbox.c.target == target,
                                            t.outbox.c.status == QueueStatus.PENDING,
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
                t.outbox.c.target == target, t.outbox.c.status == QueueStatus.PENDING))
                .group_by(t.outbox.c.batch).order_by(func.min(t.outbox.c.id))).all()
        return [row[0] for row in rows]

    def count_pending(self) -> dict[str, int]:
        with self.begin() as conn:
            rows = conn.execute(select(t.outbox.c.target, func.count()).where(
                t.outbox.c.status == QueueStatus.PENDING).group_by(t.outbox.c.target)).all()
        return {target: count for target, count in rows}

    def outbox_done(self, conn: Connection, ids: Sequence[int], *, status: str = QueueStatus.DONE,
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
                                                 t.outbox.c.status == QueueStatus.PENDING))
                     .values(status=QueueStatus.DONE))

    def drop_batch(self, conn: Connection, batch: str) -> None:
        conn.execute(t.outbox.delete().where(and_(t.outbox.c.batch == batch,
                                                  t.outbox.c.status == QueueStatus.PENDING)))


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
                    received_at=now, status=QueueStatus.PENDING, attempts=0, next_attempt_at=now))
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
                t.inbox.c.status == QueueStatus.PENDING, t.inbox.c.next_attempt_at <= now))
                .order_by(t.inbox.c.id).limit(limit)).all()
        return [dict(row._mapping) for row in rows]

    def inbox_blocked_contacts(self) -> set[str]:
        """Contacts with an event waiting for a retry: later events for them must wait."""
        with self.begin() as conn:
            rows = conn.execute(select(t.inbox.c.contact).where(and_(
                t.inbox.c.status == QueueStatus.PENDING, t.inbox.c.attempts > 0)).distinct()).all()
        return {row[0] for row in rows}

    def inbox_done(self, conn: Connection, event_id: int) -> None:
        conn.execute(update(t.inbox).where(t.inbox.c.id == event_id).values(
            status=QueueStatus.DONE, attempts=t.inbox.c.attempts + 1, last_error=None))

    def inbox_retry(self, event_id: int, error: str, next_attempt_at: datetime) -> None:
        with self.begin() as conn:
            conn.execute(update(t.inbox).where(t.inbox.c.id == event_id).values(
                attempts=t.inbox.c.attempts + 1, last_error=error,
                next_attempt_at=next_attempt_at))

    def inbox_dead(self, event: dict[str, Any], error: str) -> None:
        with self.begin() as conn:
            conn.execute(update(t.inbox).where(t.inbox.c.id == event["id"]).values(
                status=QueueStatus.DEAD, attempts=t.inbox.c.attempts + 1, last_error=error))
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

    def replay_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        """Put dead letters back for another round of attempts: every one not replayed
        yet, or those of ``ids`` (already replayed or unknown ones are left alone)."""
        return sum(self.replay_dead_letters_by_origin(ids).values())

    def replay_dead_letters_by_origin(self, ids: Sequence[int] | None = None
                                      ) -> dict[str, int]:
        """:meth:`replay_dead_letters`, counted per origin (``inbox``, ``outbox``)."""
        now = _now()
        counts = {"inbox": 0, "outbox": 0}
        d = t.dead_letters
        query = select(d).where(d.c.replayed.is_(False))
        if ids is not None:
            if not ids:
                return counts
            query = query.where(d.c.id.in_(list(ids)))
        with self.begin() as conn:
            for row in conn.execute(query).all():
                if row.origin == "inbox":
                    conn.execute(update(t.inbox).where(t.inbox.c.id == row.origin_id).values(
                        status=QueueStatus.PENDING, attempts=0, next_attempt_at=now,
                        last_error=None))
                else:
                    conn.execute(update(t.outbox).where(t.outbox.c.id == row.origin_id)
                                 .values(status=QueueStatus.PENDING, attempts=0))
                conn.execute(update(d).where(d.c.id == row.id).values(replayed=True))
                counts["inbox" if row.origin == "inbox" else "outbox"] += 1
        return counts

    def outbox_dead(self, conn: Connection, row: dict[str, Any], error: str) -> None:
        conn.execute(update(t.outbox).where(t.outbox.c.id == row["id"]).values(
            status=QueueStatus.DEAD, last_error=error, attempts=t.outbox.c.attempts + 1))
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
                earlier.c.contact == t.inbox.c.contact, earlier.c.status == QueueStatus.PENDING,
                earlier.c.id < t.inbox.c.id)).exists()
            query = (select(t.inbox).where(and_(
                t.inbox.c.status == QueueStatus.PENDING,
                t.inbox.c.next_attempt_at <= bindparam("now"),
                ~blocked)).order_by(t.inbox.c.id).limit(bindparam("limit")))
            self._inbox_heads_query = query
        with self.begin() as conn:
            rows = conn.execute(query, {"now": now or _now(), "limit": limit}).all()
        return [dict(row._mapping) for row in rows]

    def inbox_event(self, event_id: int) -> dict[str, Any] | None:
        """One stored event by id (``None``: pruned or never stored)."""
        with self.begin() as conn:
            row = conn.execute(select(t.inbox).where(t.inbox.c.id == event_id)).first()
        return dict(row._mapping) if row is not None else None

    def inbox_next_due(self) -> datetime | None:
        """When the earliest pending event becomes due (``None``: nothing pending)."""
        with self.begin() as conn:
            value = conn.execute(select(func.min(t.inbox.c.next_attempt_at)).where(
                t.inbox.c.status == QueueStatus.PENDING)).scalar()
        return _aware(value)

    def inbox_pending_count(self) -> int:
        with self.begin() as conn:
            return int(conn.execute(select(func.count()).select_from(t.inbox).where(
                t.inbox.c.status == QueueStatus.PENDING)).scalar() or 0)

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
                t.inbox.c.status == QueueStatus.DONE, t.inbox.c.received_at < before)))
        return int(result.rowcount or 0)

    def inbox_put_many(self, items: Sequence[tuple[str, str, Sequence[Change]]], *,
                       on_stored: OnStored | None = None) -> list[bool]:
        """Store several events in one transaction (group commit); per event, ``False``
        when it was stored before (or earlier in ``items``).

        ``on_stored(conn, rows)``: called in the same transaction with the stored rows
        (their ``id`` included), e.g. to queue a job per event that commits with it."""
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
                                     "received_at": now, "status": QueueStatus.PENDING,
                                     "attempts": 0, "next_attempt_at": now})
                if rows and on_stored is not None:
                    ids = conn.execute(t.inbox.insert().returning(
                        t.inbox.c.id, sort_by_parameter_order=True), rows).scalars().all()
                    for row, event_id in zip(rows, ids, strict=True):
                        row["id"] = event_id
                    on_stored(conn, rows)
                elif rows:
                    conn.execute(t.inbox.insert(), rows)
        except IntegrityError:
            # another process stored one of them meanwhile: one at a time then
            return [self.inbox_put_many([(endpoint, key, changes)], on_stored=on_stored)[0]
                    if on_stored is not None else self.inbox_put(endpoint, key, changes)
                    for endpoint, key, changes in items]
        except OperationalError as exc:
            raise StateError(f"the inbox could not store the events: {exc}") from None
        return stored


