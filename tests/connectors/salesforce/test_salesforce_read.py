"""Reading from the emulator over HTTPS: order, cursors, deletions, memberships, Bulk."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from crmsync.errors import RemoteError
from crmsync.model import Cursor
from crmsync_salesforce.emulator import SalesforceEmulator


def emails(pages: list[Any]) -> list[str]:
    return [record.email for page in pages for record in page.records]


def test_full_read_pages_in_modstamp_then_id_order(emulator: SalesforceEmulator,
                                                    connect: Any) -> None:
    with emulator.lock:
        emulator.seed(500, 0)  # three records per millisecond: the Id breaks ties
    pages = list(connect(query_batch_size=200).read(None))
    assert [len(p.records) for p in pages] == [200, 200, 100]
    keys = [(p.cursor.at, p.cursor.tie_id) for p in pages]
    assert keys == sorted(keys)
    assert sorted(emails(pages)) == sorted(f"contact0-{i}@example.com" for i in range(500))
    first = pages[0].records[0]
    assert first.ids == {"salesforce": first.ids["salesforce"]}
    assert set(first.fields) == {"FirstName", "LastName", "HasOptedOutOfEmail", "Interests__c"}
    assert first.fields["HasOptedOutOfEmail"] in ("true", "false")


def test_groups_field_is_the_raw_multiselect_value(emulator: SalesforceEmulator,
                                                   connect: Any) -> None:
    with emulator.lock:
        emulator.seed(1, 0)
    emulator.update_contact("contact0-0@example.com", {"Interests__c": "events;news"})
    [page] = connect().read(None)
    assert page.records[0].fields["Interests__c"] == "events;news"


def test_incremental_read_sees_edits_and_deletions(emulator: SalesforceEmulator,
                                                   connect: Any) -> None:
    with emulator.lock:
        emulator.seed(30, 0)
    connector = connect(overlap_s=0)
    cursor = list(connector.read(None))[-1].cursor
    emulator.update_contact("contact0-5@example.com", {"HasOptedOutOfEmail": "true"})
    gone = emulator.state()["contacts"][7]
    emulator.delete_record(gone["ids"]["salesforce"])
    records = [r for page in connector.read(cursor) for r in page.records]
    by_email = {r.email: r for r in records}
    assert by_email["contact0-5@example.com"].fields["HasOptedOutOfEmail"] == "true"
    assert by_email[gone["email"]].deleted is True
    # The read is inclusive of the cursor's stamp (the engine de-duplicates), nothing more.
    assert len(records) <= 5


def test_overlap_window_rereads_recent_changes(emulator: SalesforceEmulator,
                                               connect: Any) -> None:
    with emulator.lock:
        emulator.seed(10, 0)
    connector = connect(overlap_s=3600)
    cursor = list(connector.read(None))[-1].cursor
    assert len(emails(list(connector.read(cursor)))) == 10


def test_campaign_status_change_moves_the_contact(emulator: SalesforceEmulator,
                                                  connect: Any) -> None:
    with emulator.lock:
        emulator.seed(9, 0)
    connector = connect(overlap_s=0)
    cursor = list(connector.read(None))[-1].cursor
    member = next(m for m in emulator.org.records["CampaignMember"].values())
    emulator.set_member_status(member["Id"], "Opted Out")
    records = [r for page in connector.read(cursor) for r in page.records]
    [record] = [r for r in records if r.ids["salesforce"] == member["ContactId"]]
    assert len(records) <= 4  # the member's contact, plus ties at the cursor's stamp
    assert record.memberships == {f"campaign:{emulator.events_campaign}": "Opted Out"}
    assert record.modified_at >= cursor.at


def test_missed_deleted_window_triggers_a_resync(emulator: SalesforceEmulator,
                                                 connect: Any) -> None:
    with emulator.lock:
        emulator.seed(5, 0)
    connector = connect()
    old = Cursor(at=emulator.org.now() - timedelta(days=20), tie_id="")
    with emulator.lock:
        emulator.org.purge_recycle_bin()
    pages = list(connector.read(old))
    assert len(emails(pages)) == 5
    assert all(page.cursor.data == {"resync": True} for page in pages)


def test_converted_lead_keeps_its_subscriptions(emulator: SalesforceEmulator,
                                                connect: Any) -> None:
    lead = emulator.add_lead("lead@example.com", FirstName="Lea")
    emulator.add_member(lead, "Responded")
    connector = connect(overlap_s=0)
    cursor = list(connector.read(None))[-1].cursor
    contact_id = emulator.convert_lead(lead)
    records = [r for page in connector.read(cursor) for r in page.records]
    campaign = f"campaign:{emulator.events_campaign}"
    assert {r.ids["salesforce"] for r in records} == {contact_id}
    from_lead = next(r for r in records if "salesforce:previous" in r.ids)
    assert from_lead.ids == {"salesforce": contact_id, "salesforce:previous": lead}
    assert not any(r.deleted for r in records)
    assert all(r.memberships == {campaign: "Responded"} for r in records)
    assert records[-1].ids == {"salesforce": contact_id}  # the Contact row sorts last


def test_large_full_read_uses_a_streamed_bulk_job(emulator: SalesforceEmulator,
                                                  connect: Any) -> None:
    with emulator.lock:
        emulator.seed(250, 0)
    connector = connect(bulk_read_threshold=100, bulk_page_size=60, objects=["Contact"])
    pages = list(connector.read(None))
    assert len(set(emails(pages))) == 250
    assert emulator.requests["POST /services/data/{version}/jobs/query"] == 2  # contacts, members
    assert emulator.requests["GET /services/data/{version}/jobs/query/{job}/results"] == 5 + 2
    by_email = {r.email: r for page in pages for r in page.records}
    assert by_email["contact0-3@example.com"].memberships == {
        f"campaign:{emulator.events_campaign}": "Responded"}
    assert by_email["contact0-1@example.com"].memberships == {}


def test_session_expiry_mid_query_restarts_without_loss(emulator: SalesforceEmulator,
                                                        connect: Any) -> None:
    with emulator.lock:
        emulator.seed(700, 0)
    connector = connect(query_batch_size=200)
    pages = connector.read(None)
    seen = emails([next(pages)])
    emulator.expire_sessions()
    seen += emails(list(pages))
    assert sorted(seen) == sorted(f"contact0-{i}@example.com" for i in range(700))
    assert emulator.login.logins["jwt"] == 2


def test_session_expiry_mid_bulk_query_continues_the_job(emulator: SalesforceEmulator,
                                                          connect: Any) -> None:
    with emulator.lock:
        emulator.seed(300, 0)
    connector = connect(bulk_read_threshold=10, bulk_page_size=100, query_batch_size=200,
                        objects=["Contact"], memberships=False)
    pages = connector.read(None)
    seen = emails([next(pages)])
    emulator.expire_sessions()
    seen += emails(list(pages))
    assert sorted(seen) == sorted(f"contact0-{i}@example.com" for i in range(300))
    assert emulator.requests["POST /services/data/{version}/jobs/query"] == 1  # same job
    assert emulator.login.logins["jwt"] == 2


def test_failed_bulk_query_job_stops_the_read_before_any_page(emulator: SalesforceEmulator,
                                                               connect: Any) -> None:

    with emulator.lock:
        emulator.seed(50, 0)
        emulator.next_bulk_failure = "InternalServerError : query timed out"
    connector = connect(bulk_read_threshold=10, objects=["Contact"], memberships=False)
    pages = connector.read(None)
    with pytest.raises(RemoteError) as failed:
        next(pages)
    assert failed.value.code == "BULK_JOB_FAILED" and failed.value.retryable
    assert "query timed out" in str(failed.value)
    assert len(emails(list(connector.read(None)))) == 50  # the next run reads everything


def test_injected_server_errors_are_retried(emulator: SalesforceEmulator, connect: Any) -> None:
    with emulator.lock:
        emulator.seed(5, 0)
    connector = connect()
    connector.check()
    emulator.faults.update({"error_count": 1, "error_status": 503})
    assert len(emails(list(connector.read(None)))) == 5


def test_a_connection_cut_mid_answer_is_retried(emulator: SalesforceEmulator,
                                                connect: Any) -> None:
    with emulator.lock:
        emulator.seed(5, 0)
    connector = connect()
    connector.check()
    emulator.faults.update({"drop_count": 2})
    assert len(emails(list(connector.read(None)))) == 5
    assert emulator.faults.drop_count == 0


def _cut_bulk_result_pages(emulator: SalesforceEmulator, monkeypatch: Any, times: int) -> None:
    """Cut the connection halfway through the next ``times`` Bulk result pages."""
    from crmsync_salesforce._rest import SalesforceApi

    original = SalesforceApi.request
    armed = {"n": times}

    def request(self: Any, method: str, path: str, **kwargs: Any) -> Any:
        if kwargs.get("stream") and "/results" in path and armed["n"]:
            armed["n"] -= 1
            emulator.faults.update({"drop_count": 1})
        return original(self, method, path, **kwargs)

    monkeypatch.setattr(SalesforceApi, "request", request)


def test_a_bulk_result_page_cut_halfway_is_read_again_without_repeats(
        emulator: SalesforceEmulator, connect: Any, monkeypatch: Any) -> None:
    with emulator.lock:
        emulator.seed(60, 0)
    connector = connect(bulk_read_threshold=10, bulk_page_size=25, objects=["Contact"],
                        memberships=False)
    connector.check()
    _cut_bulk_result_pages(emulator, monkeypatch, times=2)
    read = [r.email for page in connector.read(None) for r in page.records]
    assert len(read) == 60 and len(set(read)) == 60


def test_a_bulk_result_page_that_keeps_being_cut_is_a_retryable_error(
        emulator: SalesforceEmulator, connect: Any, monkeypatch: Any) -> None:
    with emulator.lock:
        emulator.seed(30, 0)
    connector = connect(bulk_read_threshold=10, objects=["Contact"], memberships=False)
    connector.check()
    _cut_bulk_result_pages(emulator, monkeypatch, times=10)
    with pytest.raises(RemoteError) as failed:
        list(connector.read(None))
    assert failed.value.retryable and "cut off" in str(failed.value)


def test_a_merge_loser_is_read_as_its_master_not_as_a_deletion(emulator: SalesforceEmulator,
                                                                connect: Any) -> None:
    with emulator.lock:
        emulator.seed(3, 0)
    master = next(c for c in emulator.state()["contacts"] if c["lists"])
    with emulator.lock:
        duplicate = emulator.org.insert("Contact", {"LastName": "Dup",
                                                    "Email": master["email"]},
                                        stamp=emulator.org.tick())
        emulator.org.changed.clear()
    connector = connect(overlap_s=0)
    cursor = list(connector.read(None))[-1].cursor
    emulator.merge(master["ids"]["salesforce"], [duplicate])
    records = [r for page in connector.read(cursor) for r in page.records
               if r.email == master["email"]]
    assert records and not any(r.deleted for r in records)
    assert {r.ids["salesforce"] for r in records} == {master["ids"]["salesforce"]}
    assert {"salesforce": master["ids"]["salesforce"],
            "salesforce:previous": duplicate} in [dict(r.ids) for r in records]
    campaign = f"campaign:{emulator.events_campaign}"
    assert all(campaign in r.memberships for r in records)


def test_many_deletions_never_block_later_incremental_reads(emulator: SalesforceEmulator,
                                                             connect: Any) -> None:
    # Issue 14.12: Get Deleted over more than 600,000 ids answers EXCEEDED_ID_LIMIT; only
    # earliestDateAvailable is needed, so a short window is asked (id_limit scales it down).
    with emulator.lock:
        emulator.seed(10, 0)
        emulator.id_limit = 3
    connector = connect(overlap_s=0)
    old = Cursor(at=emulator.org.now() - timedelta(hours=2), tie_id="")
    gone = [c["ids"]["salesforce"] for c in emulator.state()["contacts"][:5]]
    for record_id in gone:
        emulator.delete_record(record_id)
    time.sleep(1.1)  # Get Deleted's window ends at a whole second
    records = [r for page in connector.read(old) for r in page.records]
    assert {r.ids["salesforce"] for r in records if r.deleted} == set(gone)
    assert not any(page.cursor.data.get("resync") for page in connector.read(old))


def test_bulk_reads_have_no_order_by_and_lose_nothing(emulator: SalesforceEmulator,
                                                      connect: Any) -> None:
    # Issue 14.10: ORDER BY disables PK chunking in Bulk 2.0, so large queries time out.
    # The emulator fails ORDER BY over bulk_order_by_limit rows and returns the rest in
    # no particular order; only the last page may advance the cursor.
    with emulator.lock:
        emulator.seed(250, 0)
        emulator.bulk_order_by_limit = 50
    connector = connect(bulk_read_threshold=100, bulk_page_size=60, query_batch_size=200,
                        overlap_s=60)
    before = emulator.org.now()
    pages = list(connector.read(None))
    assert len(set(emails(pages))) == 250
    assert all(p.cursor.at.year == 1970 for p in pages[:-1])
    final = pages[-1].cursor
    assert before - timedelta(seconds=61) <= final.at <= before
    emulator.update_contact("contact0-7@example.com", {"LastName": "Later"})
    later = [r for p in connector.read(final) for r in p.records]
    assert "contact0-7@example.com" in {r.email for r in later}


def test_a_removed_campaign_member_skips_the_recycle_bin(emulator: SalesforceEmulator,
                                                          connect: Any) -> None:
    # Issue 14.9 (emulator side): CampaignMember has no undelete(), so a removal is a hard
    # delete that queryAll never shows. The connector cannot see it (docs: "Campaign
    # member removals"); this pins what the emulator does so that the gap stays visible.
    with emulator.lock:
        emulator.seed(3, 0)
    member = next(iter(emulator.org.records["CampaignMember"].values()))
    connector = connect(overlap_s=0)
    emulator.delete_record(member["Id"])
    assert member["Id"] not in emulator.org.records["CampaignMember"]
    rows = list(connector.api.query(f"SELECT Id FROM CampaignMember WHERE Id = '{member['Id']}'",
                                    all_rows=True))
    assert rows == []
