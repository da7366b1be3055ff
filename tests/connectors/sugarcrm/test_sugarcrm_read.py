"""Reading: full and incremental, address changes, deletions, memberships, paging."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sugarcrm_support import FLAVOURS, control, requests_made, reset_requests, state

from crmsync.model import Change, Cursor
from crmsync_sugarcrm.emulator import EVENTS_LIST_ID

LIST_KEY = f"target_list:{EVENTS_LIST_ID}"


def read_all(connector, since=None):
    return [record for page in connector.read(since) for record in page.records]


def last_cursor(connector):
    cursor = None
    for page in connector.read(None):
        cursor = page.cursor or cursor
    return cursor


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_full_read_matches_the_store_in_cursor_order(serve, connect, flavour):
    server = serve(flavour, contacts=23, seed=3)
    connector = connect(server, page_size=5)
    pages = list(connector.read(None))
    records = [r for page in pages for r in page.records]
    expected = state(server)
    assert sorted(r.email for r in records) == sorted(expected)
    assert [len(p.records) for p in pages] == [5, 5, 5, 5, 3]
    keys = [(p.cursor.at, p.cursor.tie_id) for p in pages]
    assert keys == sorted(keys)
    for record in records:
        seen = expected[record.email]
        assert record.ids == {"sugarcrm": seen["ids"]["sugarcrm"]}
        assert record.fields["email_opt_out"] == seen["fields"]["email_opt_out"]
        assert record.fields["interests_c"] == seen["fields"]["interests_c"]
        assert dict(record.memberships) == {key: "" for key in seen["lists"]}
    assert any(r.memberships for r in records) and any(not r.memberships for r in records)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_address_only_opt_out_change_is_read_incrementally(serve, connect, flavour):
    """Flipping the opt-out on the EmailAddresses row does not move the record's
    date_modified; an incremental read must still emit the record."""
    server = serve(flavour, contacts=6)
    connector = connect(server)
    connector.write([Change(email="late@example.com", fields={"last_name": "Late"})])
    cursor = last_cursor(connector)
    before = state(server)["contact0-4@example.com"]
    flipped = before["fields"]["email_opt_out"] != "true"
    time.sleep(1.05)  # Sugar stamps are whole seconds
    control(server, "email_address", {"email": "contact0-4@example.com", "opt_out": flipped})
    after = state(server)["contact0-4@example.com"]
    assert after["date_modified"] == before["date_modified"]
    assert after["opted_out"] is flipped
    changed = read_all(connector, cursor)
    hit = [r for r in changed if r.email == "contact0-4@example.com"]
    assert hit and hit[-1].fields["email_opt_out"] == ("true" if flipped else "false")
    assert hit[-1].modified_at > cursor.at


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_shared_address_opt_out_emits_all_records(serve, connect, flavour):
    server = serve(flavour)
    connector = connect(server, modules=["Contacts", "Leads"])
    emulator = server.emulator
    with emulator.lock:
        store = emulator.store
        one = store.create("Contacts", {"last_name": "One"})
        store.set_email1(one, "family@example.com")
        two = store.create("Leads", {"last_name": "Two"})
        store.set_email1(two, "family@example.com")
    cursor = last_cursor(connector)
    time.sleep(1.05)
    # A user opts the address out while editing the Contact: the Lead is not saved.
    control(server, "update", {"email": "family@example.com",
                                "fields": {"email_opt_out": "true"}})
    changed = read_all(connector, cursor)
    ids = {r.ids["sugarcrm"]: r.fields["email_opt_out"] for r in changed}
    assert ids == {one.id: "true", two.id: "true"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_incremental_read_is_inclusive_and_sees_updates_and_deletions(serve, connect, flavour):
    server = serve(flavour, contacts=8)
    connector = connect(server, page_size=3)
    cursor = last_cursor(connector)
    time.sleep(1.05)
    control(server, "update", {"email": "contact0-1@example.com",
                               "fields": {"last_name": "Renamed"}})
    [gone] = connector.write([Change(email="contact0-2@example.com", op="delete")])
    assert gone.ok
    changed = read_all(connector, cursor)
    by_email = {r.email: r for r in changed}
    assert by_email["contact0-1@example.com"].fields["last_name"] == "Renamed"
    assert by_email["contact0-2@example.com"].deleted is True
    assert "contact0-5@example.com" not in by_email
    # Inclusive of the cursor's second: the last record of the full read comes again.
    again = read_all(connector, Cursor(at=cursor.at, tie_id=cursor.tie_id))
    assert cursor.tie_id in {r.ids["sugarcrm"] for r in again}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_keyset_paging_survives_rows_changing_during_the_scan(serve, connect, flavour):
    """Offset paging skips a row when an earlier one moves to the end mid-scan; paging
    on (date_modified, id) neither skips nor loses it."""
    server = serve(flavour, contacts=12)
    connector = connect(server, page_size=4)
    pages = connector.read(None)
    first = next(pages)
    # A record already read is modified: it moves to the end of the order.
    control(server, "update", {"email": first.records[0].email, "fields": {"title": "Moved"}})
    rest = [r for page in pages for r in page.records]
    seen = [r.email for r in first.records] + [r.email for r in rest]
    assert set(seen) == set(state(server))
    assert seen.count(first.records[0].email) == 2


def test_v4_1_stops_on_a_short_page_although_next_offset_advances(serve, connect):
    server = serve("v4_1", contacts=10)
    connector = connect(server, page_size=5, target_lists=[])
    reset_requests(server)
    records = read_all(connector)
    assert len(records) == 10
    # login, the count (get_entries_count, for full_read_count), two full pages, then a
    # third that comes back empty: next_offset never says "end" in v4_1, so a short
    # page is the only sign
    assert requests_made(server) == {"POST /service/v4_1/rest.php": 5}


def test_rest_reads_until_next_offset_is_minus_one(serve, connect):
    server = serve("rest", contacts=10)
    connector = connect(server, page_size=4, target_lists=[])
    reset_requests(server)
    assert len(read_all(connector)) == 10
    assert requests_made(server) == {"POST /rest/{version}/{module}/filter": 3,
                                     "GET /rest/{version}/{module}/count": 1,
                                     "POST /rest/{version}/oauth2/token": 1}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_memberships_and_lists(serve, connect, flavour):
    server = serve(flavour, contacts=9)
    connector = connect(server)
    assert [(item.id, item.name) for item in connector.lists()] == [(LIST_KEY, "Events")]
    members = {r.email for r in read_all(connector) if LIST_KEY in r.memberships}
    expected = {e for e, s in state(server).items() if LIST_KEY in s["lists"]}
    assert members == expected and members


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_leads_and_prospects_are_read_when_configured(serve, connect, flavour):
    server = serve(flavour)
    with server.emulator.lock:
        store = server.emulator.store
        for module in ("Contacts", "Leads", "Prospects"):
            person = store.create(module, {"last_name": module})
            store.set_email1(person, f"{module.lower()}@example.com")
    only_contacts = connect(server)
    assert [r.email for r in read_all(only_contacts)] == ["contacts@example.com"]
    everyone = connect(server, modules=["Contacts", "Leads", "Prospects"])
    assert sorted(r.email for r in read_all(everyone)) == [
        "contacts@example.com", "leads@example.com", "prospects@example.com"]


def test_cursor_inside_a_second_starts_at_that_second(serve, connect):
    server = serve("rest", contacts=3)
    connector = connect(server)
    cursor = last_cursor(connector)
    shifted = Cursor(at=cursor.at + timedelta(microseconds=500), tie_id=cursor.tie_id)
    assert cursor.tie_id in {r.ids["sugarcrm"] for r in read_all(connector, shifted)}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_polling_sees_target_list_changes_that_touch_no_record(serve, connect, flavour):
    """SuiteCRM has no web hooks; a link added or removed on a target list does not move
    the contact's date_modified, so each read compares the lists with the cursor's."""
    server = serve(flavour, contacts=6)
    connector = connect(server)
    cursor = last_cursor(connector)
    people = state(server)
    outside = next(e for e, s in people.items() if LIST_KEY not in s["lists"])
    inside = next(e for e, s in people.items() if LIST_KEY in s["lists"])
    time.sleep(1.05)
    with server.emulator.lock:
        store = server.emulator.store
        target = store.lists[EVENTS_LIST_ID]
        store.add_member(target, "Contacts", people[outside]["ids"]["sugarcrm"])
        store.remove_member(target, "Contacts", people[inside]["ids"]["sugarcrm"])
    assert state(server)[outside]["date_modified"] == people[outside]["date_modified"]
    changed = {r.email: dict(r.memberships) for r in read_all(connector, cursor)}
    assert changed[outside] == {LIST_KEY: ""}
    assert changed[inside] == {}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_full_read_of_250_with_the_default_page_size_is_whole(serve, connect, flavour):
    """Issue #13: SuiteCRM drops a prefixed order_by term, rows came in id order and the
    (date_modified, id) keyset paging skipped some and repeated others (208 of 250).
    Both flavours report Sugar's own count (get_entries_count, REST /<module>/count)."""
    server = serve(flavour, contacts=250, seed=7)
    connector = connect(server)  # page_size 200, the default
    records = read_all(connector)
    ids = [r.ids["sugarcrm"] for r in records]
    assert len(ids) == len(set(ids)) == 250
    assert connector.full_read_count() == 250


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_diff_read_without_target_lists_reads_no_list(serve, connect, flavour):
    """Issue #13: every v4_1 diff read sent a query on prospect_lists_prospects, which
    SuiteCRM refuses (Access Denied); with no target list there is nothing to compare."""
    server = serve(flavour, contacts=4)
    connector = connect(server, target_lists=[])
    cursor = last_cursor(connector)
    time.sleep(1.05)
    control(server, "update", {"email": "contact0-1@example.com",
                               "fields": {"last_name": "Renamed"}})
    reset_requests(server)
    changed = read_all(connector, cursor)
    assert [r.email for r in changed][-1] == "contact0-1@example.com"
    assert not any("ProspectLists" in path for path in requests_made(server))
