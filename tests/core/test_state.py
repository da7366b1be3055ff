"""The state store, the same tests on SQLite and on a real PostgreSQL.

PostgreSQL comes from CRMSYNC_TEST_POSTGRES_URL (``.ci/run`` starts one). Outside CI
its absence skips those tests; in CI (CI=true) it fails the run, so they can never
be skipped silently.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from crmsync.errors import StateBusy, StateError
from crmsync.model import Change, Cursor, Status, Subscription
from crmsync.state import JournalEntry, Snapshot, StateStore, content_hash, new_contact_key
from crmsync.state.migrations import MIGRATIONS


@pytest.fixture
def store(db_url):
    store = StateStore(db_url)
    yield store
    store.close()


def test_migrates_once_and_records_version(db_url) -> None:
    first = StateStore(db_url)
    assert first.version == len(MIGRATIONS)
    first.close()
    again = StateStore(db_url)  # idempotent
    assert again.version == len(MIGRATIONS)
    again.close()


def test_refuses_a_newer_schema(db_url) -> None:
    store = StateStore(db_url)
    with store.begin() as conn:
        conn.execute(text("UPDATE crmsync_schema_version SET version = 99"))
    store.close()
    with pytest.raises(StateError, match="newer than this crmsync"):
        StateStore(db_url)


def test_cursor_round_trip_in_utc(store) -> None:
    assert store.get_cursor("crm") is None
    at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with store.begin() as conn:
        store.set_cursor(conn, "crm", Cursor(at=at, tie_id="003A", data={"locator": "x"}))
    cursor = store.get_cursor("crm")
    assert cursor.at == at and cursor.at.tzinfo is not None
    assert cursor.tie_id == "003A" and cursor.data == {"locator": "x"}
    with store.begin() as conn:
        store.set_cursor(conn, "crm", Cursor(at=at + timedelta(hours=1), tie_id="003B"))
    assert store.get_cursor("crm").tie_id == "003B"


def test_identity_by_id_then_email_and_email_change_keeps_key(store) -> None:
    with store.begin() as conn:
        [(key, created, _)] = store.resolve(conn, [("sf", "003A", "ann@example.com")])
        assert created
        # the ESP knows her only by email: same person
        [(same, created, _)] = store.resolve(conn, [("mailup", None, "ann@example.com")])
        assert same == key and not created
        # her email changes in the CRM: same key, previous email reported
        [(moved, created, previous)] = store.resolve(conn, [("sf", "003A", "ann@new.example")])
        assert moved == key and not created and previous == "ann@example.com"
        assert store.emails(conn, [key]) == {key: "ann@new.example"}
        assert store.record_ids(conn, "sf", [key]) == {key: "003A"}


def test_one_id_with_two_emails_in_one_call_is_a_move(store) -> None:
    """The same record twice in one page with another email (an edit between the reads
    of an overlap window): the last email wins and both report the first as previous."""
    with store.begin() as conn:
        out = store.resolve(conn, [("sf", "003A", "a@example.com"),
                                   ("sf", "003A", "b@example.com")])
        assert out[0][0] == out[1][0]
        assert [previous for _, _, previous in out] == ["a@example.com", "a@example.com"]
        assert store.emails(conn, [out[0][0]]) == {out[0][0]: "b@example.com"}
        # known by email only (first seen at the ESP), then its CRM id with a new email
        [(key, _, _)] = store.resolve(conn, [("mailup", None, "c@example.com")])
        out = store.resolve(conn, [("sf", "003C", "c@example.com"),
                                   ("sf", "003C", "d@example.com")])
        assert {k for k, _, _ in out} == {key} and out[1][2] == "c@example.com"
        assert store.emails(conn, [key]) == {key: "d@example.com"}


def test_group_names_with_commas_round_trip(store) -> None:
    now = datetime.now(UTC)
    groups = frozenset({"Sales, EMEA", "[beta]", "news", "caf\u00e9"})
    with store.begin() as conn:
        store.put_snapshots(conn, [Snapshot("k1", "1", Status.SUBSCRIBED, groups,
                                            Status.SUBSCRIBED, "h", now, "crm:x"),
                                   Snapshot("k2", "1", Status.SUBSCRIBED, frozenset({"a", "b"}),
                                            Status.SUBSCRIBED, "h", now, "crm:x")])
        found = store.snapshots(conn, ["k1", "k2"])
        raw = dict(conn.execute(text('SELECT contact_key, "groups" FROM crmsync_snapshots'))
                   .all())
    assert found[("k1", "1")].groups == groups
    assert found[("k2", "1")].groups == {"a", "b"}
    stored = raw["k2"] if isinstance(raw["k2"], list) else json.loads(raw["k2"])
    assert stored == ["a", "b"]  # a JSON array (a list on PostgreSQL's JSONB)


def test_groups_written_before_the_json_column_are_migrated(db_url) -> None:
    """A state store at schema v3 held groups as comma-joined text, or a marker and a
    JSON array for names holding a comma: the v4 migration reads each as it was meant."""
    from sqlalchemy import create_engine

    from crmsync.state import migrations

    engine = create_engine(db_url)
    with engine.begin() as conn:
        for step in migrations.MIGRATIONS[:3]:
            step(conn)
        conn.execute(migrations.schema_version.insert().values(version=3))
        if conn.dialect.name == "postgresql":  # v3 created the column as text
            conn.execute(text('ALTER TABLE crmsync_snapshots ALTER COLUMN "groups" '
                              "TYPE TEXT USING \"groups\"::text"))
        now = datetime.now(UTC)
        for key, raw in [("k1", "[beta],news"), ("k2", "[1]"), ("k3", ""),
                         ("k4", '\x1e["Sales, EMEA", "news"]'), ("k5", "a,b")]:
            conn.execute(text(
                'INSERT INTO crmsync_snapshots (contact_key, list_id, status, "groups", '
                "crm_status, hash, changed_at, source) VALUES (:k, '1', 'subscribed', :g, "
                "'subscribed', 'h', :at, 'x')"), {"k": key, "g": raw, "at": now})
    engine.dispose()
    migrated = StateStore(db_url)
    try:
        with migrated.begin() as conn:
            found = migrated.snapshots(conn, ["k1", "k2", "k3", "k4", "k5"])
    finally:
        migrated.close()
    assert {k: found[(k, "1")].groups for k in ("k1", "k2", "k3", "k4", "k5")} == {
        "k1": {"[beta]", "news"}, "k2": {"[1]"}, "k3": frozenset(),
        "k4": {"Sales, EMEA", "news"}, "k5": {"a", "b"}}


def test_snapshots_upsert(store) -> None:
    now = datetime.now(UTC)
    snap = Snapshot("k1", "1", Status.SUBSCRIBED, frozenset({"a"}), Status.SUBSCRIBED, "h1",
                    now, "crm:x")
    with store.begin() as conn:
        store.put_snapshots(conn, [snap])
        store.put_snapshots(conn, [Snapshot("k1", "1", Status.UNSUBSCRIBED, frozenset({"a"}),
                                            Status.SUBSCRIBED, "h2", now, "esp:y")])
        found = store.snapshots(conn, ["k1"])
    assert found[("k1", "1")].status == Status.UNSUBSCRIBED
    assert found[("k1", "1")].groups == frozenset({"a"})
    assert store.status_counts() == {"1": {"unsubscribed": 1}}


def test_journal_is_append_only_and_searchable(store) -> None:
    with store.begin() as conn:
        store.append_journal(conn, [JournalEntry("k1", "ann@example.com", "1", "subscribed",
                                                 "unsubscribed", "crm", "esp:mailup", "link")])
        store.append_journal(conn, [JournalEntry("k2", "bob@example.com", "1", None,
                                                 "subscribed", "esp", "crm:sf")])
    entries = store.journal(email="ann@example.com")
    assert [(e["new_status"], e["source"]) for e in entries] == [("unsubscribed", "esp:mailup")]
    assert len(store.journal()) == 2


def test_raw_rows_read_back_as_sqlalchemy_wrote_them(store) -> None:
    """The batch writes snapshots, journal and fields as raw rows; every reader sees the
    same values as for rows written through SQLAlchemy (times in UTC, NULLs, JSON)."""
    at = datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC)
    with store.begin() as conn:
        [(key, _, _)], hashes = store.resolve(conn, [("sf", "003A", "ann@example.com")]), {}
        store.put_snapshot_rows(conn, [(key, "1", "unsubscribed", '["a", "b"]', None, "h",
                                        store.db_time(at), "esp:y")])
        store.append_journal_rows(conn, [(store.db_time(at), "run", key, "ann@example.com",
                                          "1", None, "unsubscribed", "crm", "esp:y", None, None)])
        store.set_fields_rows(conn, [("fh", '{"name": "Ann", "surname": null}', key)])
        snap = store.snapshots(conn, [key])[(key, "1")]
        store.resolve(conn, [("sf", "003A", "ann@example.com")], hashes=hashes)
        assert store.fields_views(conn, [key]) == {key: {"name": "Ann", "surname": None}}
    assert (snap.status, snap.groups, snap.crm_status, snap.changed_at) == (
        Status.UNSUBSCRIBED, frozenset({"a", "b"}), None, at)
    assert hashes == {key: "fh"}
    [entry] = store.journal(email="ann@example.com")
    assert entry["old_status"] is None and entry["reason"] is None
    assert entry["at"].replace(tzinfo=UTC) == at


def test_raw_rows_repeating_a_key_apply_in_order(store) -> None:
    """One chunk may hold a contact twice (an overlap window): as with rows applied one
    after the other, the last snapshot and fields win; the first id mapping stays."""
    at = store.db_time(datetime(2026, 3, 4, tzinfo=UTC))
    with store.begin() as conn:
        [(key, _, _)] = store.resolve(conn, [("sf", "003A", "ann@example.com")])
        store.put_snapshot_rows(conn, [
            (key, "1", "subscribed", "[]", "subscribed", "h1", at, "crm:x"),
            (key, "1", "unsubscribed", '["a"]', "subscribed", "h2", at, "esp:y"),
            (key, "2", "pending", "[]", "pending", "h3", at, "crm:x")])
        store.set_fields_rows(conn, [("f1", '{"name": "A"}', key), ("f2", '{"name": "B"}', key)])
        store._sql.many(conn, "id_map", [("esp", "E1", key), ("esp", "E1", "other")])
        snaps = store.snapshots(conn, [key])
        hashes: dict = {}
        store.resolve(conn, [("sf", "003A", "ann@example.com")], hashes=hashes)
        assert store.record_ids(conn, "esp", [key]) == {key: "E1"}
        assert store.fields_views(conn, [key]) == {key: {"name": "B"}}
    assert snaps[(key, "1")].status == Status.UNSUBSCRIBED and snaps[(key, "1")].groups == {"a"}
    assert snaps[(key, "2")].status == Status.PENDING
    assert hashes == {key: "f2"}


def test_raw_rows_keep_any_text_as_given(store) -> None:
    """The batch path's rows reach the store as they were, whatever their text: quotes,
    backslashes, braces, commas, NULL as a word, empty, newlines, non-ASCII (PostgreSQL
    receives them as array literals the store writes itself)."""
    awkward = ['say "hi"', "back\\slash \\\"", "{a,b}", "NULL", "", "line\nbreak\ttab",
               "Zoë 東京 ✓", " padded ", "null"]
    at = store.db_time(datetime(2026, 3, 4, tzinfo=UTC))
    with store.begin() as conn:
        [(key, _, _)] = store.resolve(conn, [("sf", "003A", "ann@example.com")])
        store.put_snapshot_rows(conn, [
            (key, str(n), "subscribed", json.dumps(sorted({text})), None, "h", at, text)
            for n, text in enumerate(awkward)])
        store.append_journal_rows(conn, [
            (at, "run", key, "ann@example.com", str(n), None, "subscribed", "esp", "crm:x",
             text, text or None) for n, text in enumerate(awkward)])
        store.set_fields_rows(conn, [("f1", json.dumps({"name": awkward}), key)])
        snaps = store.snapshots(conn, [key])
        views = store.fields_views(conn, [key])
    assert [snaps[(key, str(n))].source for n in range(len(awkward))] == awkward
    assert [snaps[(key, str(n))].groups for n in range(len(awkward))] == [
        frozenset({text}) for text in awkward]
    entries = store.journal(email="ann@example.com")
    assert [e["reason"] for e in entries] == awkward
    assert [e["event_id"] for e in entries] == [text or None for text in awkward]
    assert views == {key: {"name": awkward}}


def test_a_page_of_contacts_resolves_and_commits(store) -> None:
    """A page as a batch run has it (hundreds of contacts: on PostgreSQL, the lookups
    planned by index and the rows sent as arrays): created once, then known by id, by
    email for another system, their snapshots and fields read back."""
    items = [("sf", f"003{n:04d}", f"p{n}@example.com") for n in range(300)]
    at = store.db_time(datetime(2026, 3, 4, tzinfo=UTC))
    with store.begin() as conn:
        first = store.resolve(conn, items)
        keys = [key for key, _, _ in first]
        store.put_snapshot_rows(conn, [(k, "1", "subscribed", "[]", None, "h", at, "crm:sf")
                                       for k in keys])
        store.set_fields_rows(conn, [(f"f{n}", None, k) for n, k in enumerate(keys)])
    with store.begin() as conn:
        hashes: dict = {}
        again = store.resolve(conn, items, hashes=hashes)
        by_email = store.resolve(conn, [("esp", f"E{n}", email)
                                        for n, (_, _, email) in enumerate(items)])
        snaps = store.snapshots(conn, keys)
    assert all(created for _, created, _ in first) and len(set(keys)) == 300
    assert [(k, c) for k, c, _ in again] == [(k, False) for k in keys]
    assert [k for k, _, _ in by_email] == keys
    assert hashes == {k: f"f{n}" for n, k in enumerate(keys)}
    assert sorted(k for k, _ in snaps) == sorted(keys)


def test_sqlite_time_text_is_sqlalchemys() -> None:
    from datetime import timezone

    from sqlalchemy.dialects import sqlite

    from crmsync.state import schema
    from crmsync.state.rows import _sqlite_time

    dialect = sqlite.dialect()
    process = schema.snapshots.c.changed_at.type.dialect_impl(dialect).bind_processor(dialect)
    for value in (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 12, 31, 23, 59, 59, 999999),
                  datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-7)))):
        assert _sqlite_time(value) == process(value)


@given(st.one_of(
    st.dictionaries(st.text(), st.one_of(st.none(), st.text())),
    st.dictionaries(st.text(), st.one_of(st.integers(), st.booleans(), st.lists(st.text())))))
def test_content_hash_fast_path_hashes_the_same_text(value) -> None:
    import hashlib
    import json

    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    assert content_hash(value) == hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


def test_new_contact_keys_sort_by_creation_and_do_not_repeat() -> None:
    keys = [new_contact_key() for _ in range(20_000)]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in keys)
    # ordered by time (the 16-bit counter may wrap once inside one millisecond)
    assert sum(a > b for a, b in itertools.pairwise(keys)) <= 20_000 // 65_536 + 1


def test_runs_history(store) -> None:
    run = store.start_run("batch", full=True, dry_run=False)
    store.finish_run(run, "succeeded", {"crm_read": 3})
    [last] = store.runs(1)
    assert last["id"] == run and last["status"] == "succeeded" and last["stats"]["crm_read"] == 3


def test_outbox_stage_pending_done(store) -> None:
    with store.begin() as conn:
        store.stage(conn, "crm", [{"payload": {"n": i}} for i in range(5)], batch="b1")
    rows = store.pending("crm", limit=3)
    assert [r["payload"]["n"] for r in rows] == [0, 1, 2]
    with store.begin() as conn:
        store.outbox_done(conn, [r["id"] for r in rows])
    assert [r["payload"]["n"] for r in store.pending("crm")] == [3, 4]
    assert store.count_pending() == {"crm": 2}
    assert store.pending_batches("crm") == ["b1"]


def test_inbox_dedupes_retries_and_dead_letters(store) -> None:
    change = Change(email="ann@example.com", subscriptions={"1": Subscription(
        list_id="1", status=Status.UNSUBSCRIBED)}, event_id="ev1")
    assert store.inbox_put("esp", "ev1", [change]) is True
    assert store.inbox_put("esp", "ev1", [change]) is False  # redelivery stored once
    [event] = store.inbox_due()
    assert event["contact"] == "ann@example.com"
    later = datetime.now(UTC) + timedelta(minutes=5)
    store.inbox_retry(event["id"], "ESP down", later)
    assert store.inbox_due() == []
    assert store.inbox_blocked_contacts() == {"ann@example.com"}
    [event] = store.inbox_due(now=later + timedelta(seconds=1))
    store.inbox_dead(event, "gave up")
    assert store.inbox_counts() == {"dead": 1}
    [dead] = store.dead_letters()
    assert dead["error"] == "gave up" and dead["attempts"] == 2
    assert store.replay_dead_letters() == 1
    assert store.inbox_counts() == {"pending": 1}
    assert store.dead_letters() == []


def test_files_progress(store) -> None:
    with store.begin() as conn:
        store.set_file(conn, "a.csv", direction="out", run_id="r1", status="staged", rows=3,
                       sha256="abc", info={"cursor": None})
    assert store.file("a.csv")["status"] == "staged"
    assert [f["name"] for f in store.files_in("out", ["staged"])] == ["a.csv"]


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(StateError, match="cannot open the state store at postgresql"):
        StateStore("postgresql+psycopg://user:secret@127.0.0.1:9/db")
    try:
        StateStore("postgresql+psycopg://user:secret@127.0.0.1:9/db")
    except StateError as exc:
        assert "secret" not in str(exc)


def test_upgrades_a_version_1_database(db_url) -> None:
    store = StateStore(db_url)
    with store.begin() as conn:  # make it look like a database written by schema v1
        conn.execute(text("DROP INDEX IF EXISTS ix_crmsync_inbox_contact"))
        conn.execute(text("ALTER TABLE crmsync_contacts DROP COLUMN fields_json"))
        conn.execute(text("DROP TABLE crmsync_journal_seals"))
        conn.execute(text("DROP TABLE crmsync_suppressions"))
        conn.execute(text("UPDATE crmsync_schema_version SET version = 1"))
    store.close()
    upgraded = StateStore(db_url)
    assert upgraded.version == len(MIGRATIONS) == 5
    assert {"crmsync_journal_seals", "crmsync_suppressions"} <= set(
        inspect(upgraded.engine).get_table_names())
    with upgraded.begin() as conn:
        [(key, _, _)] = upgraded.resolve(conn, [("x", "1", "a@example.com")])
        upgraded.set_fields_hashes(conn, {key: "h"}, {key: {"name": "A"}})
        assert upgraded.fields_views(conn, [key]) == {key: {"name": "A"}}
    upgraded.close()


def test_exclusive_lock_refuses_a_second_holder(db_url) -> None:
    first, second = StateStore(db_url), StateStore(db_url)
    try:
        with (first.exclusive("batch"), pytest.raises(StateBusy, match="another crmsync"),
              second.exclusive("batch")):
            pass
        with second.exclusive("batch"):  # released: free again
            pass
    finally:
        first.close()
        second.close()


@given(st.frozensets(st.text()))
def test_groups_text_is_the_json_array_of_the_sorted_names(groups) -> None:
    from crmsync.state.rows import groups_of, groups_text

    assert json.loads(groups_text(groups)) == sorted(groups)
    assert groups_of(groups_text(groups)) == groups


@given(st.dictionaries(st.sampled_from(["a", "b", "name"]), st.one_of(st.none(), st.text())),
       st.sets(st.text(min_size=1), max_size=3), st.booleans())
def test_models_assumed_valid_equal_the_validated_ones(fields, lists, explicit) -> None:
    """The engine's per-contact constructor (no validation) builds the same models."""
    from crmsync.engine.plan import change, subscription

    at = datetime(2026, 1, 2, tzinfo=UTC)
    subs = {name: subscription(name, Status.PENDING, frozenset({"g"}), at, source="crm:x",
                               explicit=explicit) for name in lists}
    fast = change("ann@example.com", ids={"crm": "1"}, fields=fields, subscriptions=subs,
                  occurred_at=at, source="crm:x")
    slow = Change(email="ann@example.com", ids={"crm": "1"}, fields=fields, occurred_at=at,
                  source="crm:x", subscriptions={name: Subscription(
                      list_id=name, status=Status.PENDING, groups=frozenset({"g"}),
                      changed_at=at, source="crm:x", explicit=explicit) for name in lists})
    assert fast == slow and fast.model_dump() == slow.model_dump()
    assert fast.model_dump_json() == slow.model_dump_json()


def test_a_decision_in_one_transaction_with_its_contact_locks_commits_or_rolls_back_whole():
    """A real-time event's decision (read, vendor write, commit) joins its contact
    locks' transaction: what it wrote is gone if the block fails after it, as is the
    lock; without ``one_transaction`` each ``begin`` commits on its own, as before."""
    from tests.core.conftest import fresh_postgres

    at = datetime(2026, 1, 1, tzinfo=UTC)
    with fresh_postgres() as url:
        store = StateStore(url)
        try:
            with (pytest.raises(RuntimeError, match="vendor"),
                  store.contact_locks(["ann@example.com"], one_transaction=True)):
                with store.begin() as conn:
                    store.set_cursor(conn, "crm", Cursor(at=at))
                raise RuntimeError("the vendor write failed")
            assert store.get_cursor("crm") is None
            with store.contact_locks(["ann@example.com"], one_transaction=True):
                with store.begin() as conn:
                    store.set_cursor(conn, "crm", Cursor(at=at))
                assert store.get_cursor("crm") is not None  # (read in the same transaction)
            assert store.get_cursor("crm") == Cursor(at=at)  # committed with the locks
            with (pytest.raises(RuntimeError, match="vendor"),
                  store.contact_locks(["ann@example.com"])):
                with store.begin() as conn:
                    store.set_cursor(conn, "esp", Cursor(at=at))
                raise RuntimeError("the vendor write failed")
            assert store.get_cursor("esp") == Cursor(at=at)
        finally:
            store.close()
