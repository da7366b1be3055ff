"""The durable inbox's group commit: concurrent events share transactions, each is
stored once, each caller hears about its own event."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from crmsync.errors import StateError
from crmsync.model import Change
from crmsync.server import StoreInbox
from crmsync.state import StateStore


def _change(n: int) -> list[Change]:
    return [Change(email=f"c{n}@example.com", event_id=f"e{n}")]


def test_concurrent_puts_store_each_event_once(db_url) -> None:
    store = StateStore(db_url)
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


def test_heads_keep_each_contact_in_order(db_url) -> None:
    store = StateStore(db_url)
    try:
        for key, email in [("a1", "a@example.com"), ("b1", "b@example.com"),
                           ("a2", "a@example.com"), ("c1", "c@example.com")]:
            store.inbox_put("esp", key, [Change(email=email)])
        heads = store.inbox_heads(limit=10)
        assert [h["dedupe_key"] for h in heads] == ["a1", "b1", "c1"]
        assert [h["dedupe_key"] for h in store.inbox_heads(limit=2)] == ["a1", "b1"]
        # a1 waits for a retry: a2 waits behind it, the others go on
        store.inbox_retry(heads[0]["id"], "503", datetime.now(UTC) + timedelta(hours=1))
        assert [h["dedupe_key"] for h in store.inbox_heads(limit=10)] == ["b1", "c1"]
        assert store.inbox_next_due() is not None
        with store.begin() as conn:
            store.inbox_done(conn, heads[1]["id"])
        store.inbox_dead(dict(heads[0], attempts=1), "gave up")
        assert [h["dedupe_key"] for h in store.inbox_heads(limit=10)] == ["a2", "c1"]
        assert store.inbox_pending_count() == 2
        assert store.inbox_prune(datetime.now(UTC) + timedelta(seconds=5)) == 1
    finally:
        store.close()
