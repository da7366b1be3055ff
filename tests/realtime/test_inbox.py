"""The durable inbox's group commit: concurrent events share transactions, each is
stored once, each caller hears about its own event."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from crmsync.errors import StateError
from crmsync.model import Change
from crmsync.server import StoreInbox
from crmsync.state import StateStore


def _change(n: int) -> list[Change]:
    return [Change(email=f"c{n}@example.com", event_id=f"e{n}")]


def test_concurrent_puts_store_each_event_once(tmp_path) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    inbox = StoreInbox(store)
    keys = [f"k{n % 150}" for n in range(300)]  # every event delivered twice
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda n: inbox.put("esp", keys[n], _change(n % 150)),
                                range(300)))
    assert sum(results) == 150
    events = store.inbox_events()
    assert sorted(e["dedupe_key"] for e in events) == sorted({*keys})
    assert store.inbox_put_many([("esp", "k1", _change(1)), ("esp", "new", _change(2)),
                                 ("esp", "new", _change(2))]) == [False, True, False]
    store.close()


def test_a_store_failure_reaches_every_waiting_caller(tmp_path) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    inbox = StoreInbox(store)
    store.engine.dispose()
    (tmp_path / "state.db").unlink()
    (tmp_path / "state.db").mkdir()  # the database file is gone: nothing can be stored
    with pytest.raises(StateError):
        inbox.put("esp", "k", _change(1))
    store.close()
