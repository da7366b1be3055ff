"""The operator's few writes that the state store has no method for yet: replaying
chosen dead letters (the store's :meth:`~crmsync.state.StateStore.replay_dead_letters`
replays them all).

Each dead letter goes back where it came from, exactly as the store's own replay does:
an inbox event is pending again with its attempts reset, an outbox write is pending
again; the dead letter is marked replayed. One transaction for the selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import and_, select, update

from . import schema as t

if TYPE_CHECKING:
    from .store import StateStore

__all__ = ["replay_dead_letters"]


def replay_dead_letters(store: StateStore, ids: Sequence[int]) -> dict[str, int]:
    """Put the dead letters ``ids`` back for another round of attempts; the ones already
    replayed (or unknown) are left alone. Returns how many went back per origin."""
    now = datetime.now(UTC)
    counts = {"inbox": 0, "outbox": 0}
    if not ids:
        return counts
    d = t.dead_letters
    with store.begin() as conn:
        rows = conn.execute(select(d).where(and_(d.c.id.in_(list(ids)),
                                                 d.c.replayed.is_(False)))).all()
        for row in rows:
            if row.origin == "inbox":
                conn.execute(update(t.inbox).where(t.inbox.c.id == row.origin_id).values(
                    status="pending", attempts=0, next_attempt_at=now, last_error=None))
            else:
                conn.execute(update(t.outbox).where(t.outbox.c.id == row.origin_id)
                             .values(status="pending", attempts=0))
            conn.execute(update(d).where(d.c.id == row.id).values(replayed=True))
            counts["inbox" if row.origin == "inbox" else "outbox"] += 1
    return counts
