"""The operator's few writes that the state store has no method for yet: replaying
chosen dead letters (the store's :meth:`~crmsync.state.StateStore.replay_dead_letters`
replays them all).

Each dead letter goes back where it came from, exactly as the store's own replay does:
an inbox event is pending again with its attempts reset, an outbox write is pending
again; the dead letter is marked replayed. One transaction for the selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import StateStore

__all__ = ["replay_dead_letters"]


def replay_dead_letters(store: StateStore, ids: Sequence[int]) -> dict[str, int]:
    """Put the dead letters ``ids`` back for another round of attempts; the ones already
    replayed (or unknown) are left alone. Returns how many went back per origin."""
    return store.replay_dead_letters_by_origin(ids)
