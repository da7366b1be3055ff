"""A batch run end to end: the Salesforce emulator (HTTPS) against the in-memory ESP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crmsync.runtime import open_side
from crmsync.testing.pairs import MemoryEspPair
from crmsync_salesforce.emulator import SalesforceEmulator


@pytest.fixture
def run(tmp_path: Path, emulator: SalesforceEmulator,
        monkeypatch: pytest.MonkeyPatch) -> MemoryEspPair:
    return MemoryEspPair(tmp_path, "salesforce", emulator.demo_profile(),
                         setenv=monkeypatch.setenv, crm_settings={"query_batch_size": 200})


def esp_lists(run: Any, email: str) -> dict[str, Any]:
    return run.esp_lists(email)


def test_crm_to_esp_and_unsubscribe_back(run: Any, emulator: SalesforceEmulator) -> None:
    with emulator.lock:
        emulator.seed(9, 0)
    people = {c["email"]: c for c in emulator.state()["contacts"]}
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert stats.crm_read == 9
    for email, entry in people.items():
        lists = esp_lists(run, email)
        expected = "unsubscribed" if entry["opted_out"] else "subscribed"
        assert lists["1"]["status"] == expected, email
    # contact 3 is "Responded" in the Events campaign, contact 0 "Sent", contact 6 "Opted Out"
    assert esp_lists(run, "contact0-3@example.com")["2"]["status"] == "subscribed"
    assert esp_lists(run, "contact0-0@example.com")["2"]["status"] == "pending"
    assert esp_lists(run, "contact0-6@example.com")["2"]["status"] == "unsubscribed"
    assert "2" not in esp_lists(run, "contact0-1@example.com")

    target = next(e for e, c in people.items() if not c["opted_out"])
    with open_side(run.config, "esp") as esp:
        esp.unsubscribe(target, "1")
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert stats.crm_written == 1
    after = {c["email"]: c for c in emulator.state()["contacts"]}
    assert after[target]["opted_out"] is True
    assert sum(c["opted_out"] for c in after.values()) == \
        sum(c["opted_out"] for c in people.values()) + 1

    emulator.update_contact("contact0-1@example.com", {"LastName": "Renamed"})
    stats = run()
    assert stats.status == "succeeded" and stats.esp_written == 1


def test_merging_duplicates_keeps_the_survivor_subscribed(run: Any,
                                                          emulator: SalesforceEmulator) -> None:
    # Issue 14.8: merge losers come back from queryAll deleted, with MasterRecordId set.
    # Read as deletions, the default deletes = "unsubscribe" unsubscribed the survivor.
    with emulator.lock:
        emulator.seed(9, 0)
    people = {c["email"]: c for c in emulator.state()["contacts"]}
    email = next(e for e, c in people.items() if not c["opted_out"] and c["lists"])
    master = people[email]["ids"]["salesforce"]
    with emulator.lock:
        duplicate = emulator.org.insert("Contact", {"LastName": "Dup", "Email": email},
                                        stamp=emulator.org.tick())
        emulator.org.changed.clear()
    assert run().status == "succeeded"
    before = esp_lists(run, email)
    assert before["1"]["status"] == "subscribed"
    assert before["2"]["status"] in ("subscribed", "pending")
    emulator.merge(master, [duplicate])
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    after = esp_lists(run, email)
    assert after["1"]["status"] == "subscribed"
    assert after["2"]["status"] == before["2"]["status"]


def test_a_removed_campaign_member_is_unsubscribed_from_its_list(
        run: Any, emulator: SalesforceEmulator) -> None:
    # Issue 14.9: a removed CampaignMember is hard-deleted (no undelete(), no recycle bin),
    # and the person's record does not change, so no read shows the removal. The list is
    # reconciled with the campaign's members on the next diff run.
    with emulator.lock:
        emulator.seed(9, 0)
    assert run().status == "succeeded"
    assert esp_lists(run, "contact0-3@example.com")["2"]["status"] == "subscribed"
    member = next(m for m in emulator.org.records["CampaignMember"].values()
                  if m.get("Status") == "Responded")
    person = member.get("ContactId") or member.get("LeadId")
    email = next(c["email"] for c in emulator.state()["contacts"]
                 if c["ids"]["salesforce"] == person)
    others = [c["email"] for c in emulator.state()["contacts"] if c["email"] != email
              and esp_lists(run, c["email"]).get("2", {}).get("status") == "subscribed"]
    emulator.delete_record(member["Id"])
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert esp_lists(run, email)["2"]["status"] == "unsubscribed"
    assert esp_lists(run, email)["1"]["status"] in ("subscribed", "unsubscribed")
    for other in others:  # nobody else moves
        assert esp_lists(run, other)["2"]["status"] == "subscribed"
    assert run().esp_written == 0  # once


def test_a_full_read_is_checked_against_salesforce_counts(run: Any,
                                                          emulator: SalesforceEmulator) -> None:
    # Issue 13.2 for Salesforce: COUNT() of each object read, less the converted Leads
    # (read as their Contacts) and the records without an address, is what a full read
    # must yield; a read that comes up short fails loudly.
    from crmsync_salesforce._reader import Reader

    with emulator.lock:
        emulator.seed(9, 0)
    lead = emulator.add_lead("lead@example.com", FirstName="Lea")
    emulator.add_member(lead, "Responded")
    emulator.convert_lead(lead)
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason

    original = Reader._contact
    dropped: list[str] = []

    def lossy(self: Reader, item: Any, *args: Any, **kwargs: Any) -> Any:
        contact = original(self, item, *args, **kwargs)
        if contact is not None and not dropped:
            dropped.append(contact.email)  # a page that loses a record
            return None
        return contact

    Reader._contact = lossy  # type: ignore[method-assign]
    try:
        from crmsync.runtime import build_batch, open_store
        state = open_store(run.config)
        try:
            with (open_side(run.config, "crm") as crm, open_side(run.config, "esp") as esp,
                  pytest.raises(Exception, match="came up short")):
                build_batch(run.config, crm, esp, state).run(full=True)
        finally:
            state.close()
    finally:
        Reader._contact = original  # type: ignore[method-assign]
