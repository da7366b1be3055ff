"""Reading from the emulator: VTQL full reads, sync + VTQL incremental reads, memberships."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from crmsync.errors import RemoteError
from crmsync.model import Change, Cursor


def contacts(pages):
    return [record for page in pages for record in page.records]


def last_cursor(connector):
    cursor = None
    for page in connector.read(None):
        cursor = page.cursor or cursor
    return cursor


def test_full_read_returns_every_contact_once_whoever_owns_it(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=430)  # 150 share one second: more than a VTQL page
    connector = vtiger_connector(server)
    pages = list(connector.read(None))
    records = contacts(pages)
    assert len(records) == 430
    assert len({r.ids["vtiger"] for r in records}) == 430
    assert {r.fields["assigned_user_id"] for r in records} == {"19x1", "19x5"}
    keys = [p.cursor.key() for p in pages]
    assert keys == sorted(keys)
    queries = [c["query"]["query"] for c in server.emulator.calls if c["operation"] == "query"
               and "Contacts" in c["query"]["query"] and "count(*)" not in c["query"]["query"]]
    assert all(q.endswith(";") and "limit" in q for q in queries)
    # 430 rows, 100 a page, plus one page for the 150-contact tie and overlap re-reads
    assert len(queries) <= 7


def test_values_are_parsed_from_strings(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=20, timezone="Europe/Rome")
    emulator = server.emulator
    record = emulator.contact("contact0-6@example.com")
    record.fields["modifiedtime"] = "2026-07-01 12:00:00"  # Rome, summer: UTC+2
    record.mtime = emulator.epoch("2026-07-01 12:00:00")
    record.fields["cf_901"] = "news |##| tech"
    emulator.version += 1
    connector = vtiger_connector(server, server_timezone="Europe/Rome")
    [found] = [r for r in contacts(connector.read(None)) if r.email == "contact0-6@example.com"]
    assert found.fields["emailoptout"] == "true"  # the seed opts out every 7th
    assert found.fields["donotcall"] == "false"
    assert found.fields["modifiedtime"] == "2026-07-01T10:00:00Z"
    assert found.modified_at == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    assert found.fields["account_id"] is None  # an empty reference
    assert found.fields["assigned_user_id"] == "19x1"
    assert found.fields["cf_901"] == "news;tech"
    mixed = [r for r in contacts(connector.read(None)) if r.ids["vtiger"] == "12x11"]
    assert mixed[0].email == "contact0-9@example.com"  # stored as Contact0-9@Example.com


def test_memberships_come_from_retrieve_related(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=12)
    connector = vtiger_connector(server)
    campaign = f"campaign:1x{server.emulator.campaign_id}"
    assert [item.id for item in connector.lists()] == [campaign]
    records = {r.email: r for r in contacts(connector.read(None))}
    assert dict(records["contact0-3@example.com"].memberships) == {campaign: ""}
    assert dict(records["contact0-4@example.com"].memberships) == {}
    operations = [c["operation"] for c in server.emulator.calls]
    assert "retrieve_related" in operations and "query_related" not in operations


def test_incremental_read_uses_sync_and_covers_other_owners(vtiger_server, vtiger_connector,
                                                           caplog):
    server = vtiger_server(contacts=40)
    emulator = server.emulator
    connector = vtiger_connector(server)
    cursor = last_cursor(connector)
    emulator.advance(10)
    emulator.update_contact("contact0-1@example.com", {"emailoptout": "true"})  # admin's
    emulator.update_contact("contact0-4@example.com", {"emailoptout": "true"})  # sales'
    emulator.calls.clear()
    with caplog.at_level(logging.WARNING, logger="crmsync_vtiger"):
        changed = {r.email: r for r in contacts(connector.read(cursor))}
    assert changed["contact0-1@example.com"].fields["emailoptout"] == "true"
    assert changed["contact0-4@example.com"].fields["emailoptout"] == "true"
    syncs = [c for c in emulator.calls if c["operation"] == "sync"]
    assert syncs and all(int(c["query"]["modifiedTime"]) >= 1 for c in syncs)
    assert all(c["http"] == "GET" for c in syncs)
    [warning] = [r for r in caplog.records if "sync returns only" in r.getMessage()]
    assert "incremental" in warning.getMessage() and "sync_type" in warning.getMessage()


def test_incremental_sync_only_misses_other_owners_query_only_misses_deletes(
        vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=40)
    emulator = server.emulator
    by_sync = vtiger_connector(server, incremental="sync")
    by_query = vtiger_connector(server, incremental="query")
    cursor = last_cursor(by_sync)
    emulator.advance(10)
    emulator.update_contact("contact0-4@example.com", {"title": "x"})  # owned by 19x5
    emulator.update_contact("contact0-5@example.com", {"title": "x"})  # owned by 19x1
    by_sync.write([Change(email="contact0-6@example.com", op="delete")])
    # the cursor is inclusive: drop the re-read of its own second
    seen_sync = [r for r in contacts(by_sync.read(cursor)) if r.modified_at > cursor.at]
    seen_query = [r for r in contacts(by_query.read(cursor)) if r.modified_at > cursor.at]
    assert {r.email for r in seen_sync if not r.deleted} == {"contact0-5@example.com"}
    assert [r.ids["vtiger"] for r in seen_sync if r.deleted] == ["12x8"]
    assert {r.email for r in seen_query} == {"contact0-4@example.com", "contact0-5@example.com"}


def test_deletions_arrive_as_tombstones_with_their_id(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=10)
    connector = vtiger_connector(server)
    cursor = last_cursor(connector)
    server.emulator.advance(5)
    [result] = connector.write([Change(email="contact0-0@example.com", op="delete")])
    assert result.ok
    [gone] = [r for r in contacts(connector.read(cursor)) if r.deleted]
    assert gone.ids == {"vtiger": result.record_id}
    assert gone.email.endswith("@vtiger.invalid")


def test_joining_a_campaign_is_seen_although_modifiedtime_does_not_move(
        vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=10)
    emulator = server.emulator
    connector = vtiger_connector(server)
    cursor = last_cursor(connector)
    record = emulator.contact("contact0-1@example.com")
    emulator.members[emulator.campaign_id].add(record.crmid)  # a user links it in the UI
    emulator.members[emulator.campaign_id].discard(emulator.contact("contact0-3@example.com").crmid)
    seen = {r.email: r for r in contacts(connector.read(cursor))}
    assert dict(seen["contact0-1@example.com"].memberships) == {
        f"campaign:1x{emulator.campaign_id}": ""}
    assert dict(seen["contact0-3@example.com"].memberships) == {}


def test_a_cursor_at_the_epoch_never_sends_modifiedtime_zero(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=5)
    connector = vtiger_connector(server, incremental="sync")
    epoch = Cursor(at=datetime(1970, 1, 1, tzinfo=UTC))
    assert len(contacts(connector.read(epoch))) == 4  # one of five belongs to 19x5
    assert [c["query"]["modifiedTime"] for c in server.emulator.calls
            if c["operation"] == "sync"] == ["1"]


def test_contacts_without_an_address_are_skipped(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=3)
    emulator = server.emulator
    emulator._insert("Contacts", {"lastname": "NoEmail", "assigned_user_id": "19x1"},
                     emulator.now())
    connector = vtiger_connector(server)
    assert len(contacts(connector.read(None))) == 3
    assert connector.reader.skipped_without_email == 1
    # the CRM counts 4 contacts; the one without an address is left out on purpose
    assert connector.full_read_count() == 3


def test_full_read_count_is_vtqls_count(vtiger_server, vtiger_connector):
    """Issue #13: a full read is compared with the CRM's own count (VTQL count(*),
    answered [{"count": "<n>"}] by vTiger 8.0.0)."""
    server = vtiger_server(contacts=130)
    connector = vtiger_connector(server)
    assert connector.full_read_count() is None  # no full read yet
    assert len(contacts(connector.read(None))) == 130
    assert connector.full_read_count() == 130
    counts = [c["query"]["query"] for c in server.emulator.calls if c["operation"] == "query"
              and "count(*)" in c["query"]["query"]]
    assert counts == ["select count(*) from Contacts;"] * 2  # before and after the read


def test_fields_setting_narrows_the_columns_read(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=5)
    connector = vtiger_connector(server, fields=["firstname", "cf_901"], campaigns=[])
    [first, *_] = contacts(connector.read(None))
    assert set(first.fields) == {"email", "emailoptout", "modifiedtime", "assigned_user_id",
                                 "firstname", "cf_901"}
    queries = [c["query"]["query"] for c in server.emulator.calls if c["operation"] == "query"
               and "count(*)" not in c["query"]["query"]]
    assert queries[0].startswith(
        "select id,email,emailoptout,modifiedtime,assigned_user_id,firstname,cf_901 from")
    wrong = vtiger_connector(server, fields=["nosuchfield"], campaigns=[])
    with pytest.raises(RemoteError, match="misspelt"):
        list(wrong.read(None))


def test_fields_setting_also_cuts_what_sync_returns(vtiger_server, vtiger_connector):
    server = vtiger_server(contacts=5)
    connector = vtiger_connector(server, fields=["firstname"], campaigns=[],
                                 incremental="sync")
    records = contacts(connector.read(Cursor(at=datetime(2000, 1, 1, tzinfo=UTC))))
    assert records
    assert all(set(r.fields) == {"email", "emailoptout", "modifiedtime", "assigned_user_id",
                                 "firstname"} for r in records)
