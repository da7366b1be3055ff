"""Writing to the emulator: Collections, Bulk 2.0 ingest, memberships, partial failures."""

from __future__ import annotations

from typing import Any

from crmsync.model import Change
from crmsync_salesforce.emulator import SalesforceEmulator

COLLECTIONS = "PATCH /services/data/{version}/composite/sobjects"


def person(emulator: SalesforceEmulator, email: str) -> dict[str, Any]:
    return next(c for c in emulator.state()["contacts"] if c["email"] == email)


def opt_outs(emulator: SalesforceEmulator, count: int, *, with_ids: bool = True) -> list[Change]:
    changes = []
    for entry in emulator.state()["contacts"][:count]:
        changes.append(Change(email=entry["email"], fields={"HasOptedOutOfEmail": "true"},
                              ids=entry["ids"] if with_ids else {}, source="mailup"))
    return changes


def test_opt_outs_go_through_collections_of_200(emulator: SalesforceEmulator,
                                                connect: Any) -> None:
    with emulator.lock:
        emulator.seed(450, 0)
    results = connect().write(opt_outs(emulator, 450))
    assert [r.ok for r in results] == [True] * 450
    assert emulator.requests[COLLECTIONS] == 3
    assert all(c["opted_out"] for c in emulator.state()["contacts"])


def test_records_are_found_by_email_when_the_id_is_unknown(emulator: SalesforceEmulator,
                                                           connect: Any) -> None:
    with emulator.lock:
        emulator.seed(5, 0)
    results = connect().write(opt_outs(emulator, 5, with_ids=False))
    assert all(r.ok for r in results)
    assert [r.record_id for r in results] == [c["ids"]["salesforce"]
                                              for c in emulator.state()["contacts"][:5]]
    # One lookup: all were Contacts, so the Lead lookup was not needed.
    assert emulator.requests["GET /services/data/{version}/query/"] == 1


def test_partial_failure_maps_back_to_each_change(emulator: SalesforceEmulator,
                                                  connect: Any) -> None:
    with emulator.lock:
        emulator.seed(4, 0)
        emulator.org.reject_emails = {"contact0-2@example.com"}
    changes = [*opt_outs(emulator, 4),
               Change(email="broken@example.com", ids={"salesforce": "003NOTANID"},
                      fields={"HasOptedOutOfEmail": "true"})]
    results = connect().write(changes)
    assert [r.ok for r in results] == [True, True, False, True, False]
    assert results[2].code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert "validation rule" in (results[2].error or "")
    assert results[4].code == "MALFORMED_ID"
    assert not results[2].retryable
    assert person(emulator, "contact0-2@example.com")["opted_out"] is False
    assert person(emulator, "contact0-3@example.com")["opted_out"] is True


def test_creates_missing_contacts_and_their_memberships(emulator: SalesforceEmulator,
                                                        connect: Any) -> None:
    campaign = f"campaign:{emulator.events_campaign}"
    results = connect().write([
        Change(email="new@example.com", fields={"FirstName": "New"},
               memberships={campaign: "Responded"})])
    assert results[0].ok, results[0].error
    created = person(emulator, "new@example.com")
    assert created["ids"]["salesforce"] == results[0].record_id
    assert created["fields"]["LastName"] == "[not provided]"
    assert created["lists"] == {campaign: {"status": "Responded", "groups": []}}


def test_membership_update_and_removal(emulator: SalesforceEmulator, connect: Any) -> None:
    with emulator.lock:
        emulator.seed(4, 0)
    campaign = f"campaign:{emulator.events_campaign}"
    first, _, _, fourth = emulator.state()["contacts"]
    connector = connect()
    results = connector.write([
        Change(email=first["email"], ids=first["ids"], memberships={campaign: "Opted Out"}),
        Change(email=fourth["email"], ids=fourth["ids"], memberships={campaign: None}),
    ])
    assert all(r.ok for r in results), results
    assert person(emulator, first["email"])["lists"][campaign]["status"] == "Opted Out"
    assert person(emulator, fourth["email"])["lists"] == {}
    bad = connector.write([Change(email=first["email"], ids=first["ids"],
                                  memberships={campaign: "Maybe"})])
    assert bad[0].code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"


def test_email_change_keeps_the_record(emulator: SalesforceEmulator, connect: Any) -> None:
    with emulator.lock:
        emulator.seed(1, 0)
    [entry] = emulator.state()["contacts"]
    [result] = connect().write([Change(email="renamed@example.com",
                                       previous_email=entry["email"])])
    assert result.ok and result.record_id == entry["ids"]["salesforce"]
    assert person(emulator, "renamed@example.com")["ids"] == entry["ids"]


def test_deletes_in_collections(emulator: SalesforceEmulator, connect: Any) -> None:
    with emulator.lock:
        emulator.seed(3, 0)
    entry = emulator.state()["contacts"][1]
    results = connect().write([
        Change(email=entry["email"], op="delete", ids=entry["ids"]),
        Change(email="nobody@example.com", op="delete")])
    assert results[0].ok and not results[1].ok and results[1].code == "NOT_FOUND"
    assert person(emulator, entry["email"])["deleted"] is True


def test_large_writes_use_one_bulk_ingest_job(emulator: SalesforceEmulator,
                                              connect: Any) -> None:
    with emulator.lock:
        emulator.seed(60, 0)
        emulator.org.reject_emails = {"contact0-7@example.com"}
    changes = opt_outs(emulator, 60)
    changes.append(Change(email=changes[0].email, ids=changes[0].ids,
                          fields={"FirstName": "Twice"}))  # the same record twice: merged
    results = connect(bulk_write_threshold=10).write(changes)
    assert len(results) == 61
    assert [i for i, r in enumerate(results) if not r.ok] == [7]
    assert results[7].code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert emulator.requests["POST /services/data/{version}/jobs/ingest"] == 1
    assert emulator.requests[COLLECTIONS] == 0
    state = {c["email"]: c for c in emulator.state()["contacts"]}
    assert sum(c["opted_out"] for c in state.values()) == 59
    assert state[changes[0].email]["fields"]["FirstName"] == "Twice"


def test_failed_bulk_job_loses_nothing(emulator: SalesforceEmulator, connect: Any) -> None:
    with emulator.lock:
        emulator.seed(30, 0)
        emulator.next_bulk_failure = "InternalServerError : retry later"
    connector = connect(bulk_write_threshold=10)
    changes = opt_outs(emulator, 30)
    before = emulator.state()
    results = connector.write(changes)
    assert all(not r.ok and r.retryable and r.code == "BULK_JOB_FAILED" for r in results)
    assert emulator.state() == before
    again = connector.write(changes)  # the engine retries the same changes later
    assert all(r.ok for r in again)
    assert all(c["opted_out"] for c in emulator.state()["contacts"])


def test_session_expiry_mid_bulk_ingest(emulator: SalesforceEmulator, connect: Any,
                                        monkeypatch: Any) -> None:
    with emulator.lock:
        emulator.seed(30, 0)
        emulator.bulk_polls = 3
    connector = connect(bulk_write_threshold=10)
    naps: list[float] = []

    def nap(seconds: float) -> None:
        if not naps:
            emulator.expire_sessions()  # while the job runs
        naps.append(seconds)

    monkeypatch.setattr(connector.api, "sleep", nap)
    results = connector.write(opt_outs(emulator, 30))
    assert all(r.ok for r in results)
    assert emulator.login.logins["jwt"] == 2
    assert emulator.requests["POST /services/data/{version}/jobs/ingest"] == 1
    assert all(c["opted_out"] for c in emulator.state()["contacts"])


def test_changes_for_a_converted_lead_go_to_its_contact(emulator: SalesforceEmulator,
                                                         connect: Any) -> None:
    lead = emulator.add_lead("convert@example.com")
    contact_id = emulator.convert_lead(lead)
    [result] = connect().write([Change(email="convert@example.com", ids={"salesforce": lead},
                                       fields={"HasOptedOutOfEmail": "true"})])
    assert result.ok and result.record_id == contact_id
    assert person(emulator, "convert@example.com")["opted_out"] is True


def test_bulk_uploads_are_split_below_the_size_limit(monkeypatch: Any) -> None:
    from crmsync_salesforce import _writer

    monkeypatch.setattr(_writer, "_UPLOAD_LIMIT", 60)  # two 26-byte rows
    merged = {f"003{n:015d}": {"HasOptedOutOfEmail": True} for n in range(10)}
    chunks = _writer.Writer._upload_chunks(list(merged), merged)
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 2]


def test_two_changes_for_one_new_address_create_one_record(emulator: SalesforceEmulator,
                                                           connect: Any) -> None:
    results = connect().write([
        Change(email="twin@example.com", fields={"FirstName": "One"}),
        Change(email="Twin@Example.com", fields={"LastName": "Two"})])
    assert results[0].ok and results[1].ok and results[0].record_id == results[1].record_id
    [entry] = [c for c in emulator.state()["contacts"] if c["email"] == "twin@example.com"]
    assert entry["fields"]["FirstName"] == "One" and entry["fields"]["LastName"] == "Two"
