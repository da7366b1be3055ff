"""A batch run end to end on both flavours: the Sugar emulator and the in-memory ESP."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sugarcrm_support import FLAVOURS, control, requests_made, reset_requests, state

from crmsync.runtime import open_side
from crmsync.testing.pairs import MemoryEspPair
from crmsync_sugarcrm.emulator import EVENTS_LIST_ID


@pytest.fixture(params=FLAVOURS)
def run(request, tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch) -> Any:
    server = serve(request.param)
    pair = MemoryEspPair(tmp_path, "sugarcrm", server.emulator.demo_profile(),
                         setenv=monkeypatch.setenv)
    pair.server = server
    return pair


def esp_lists(run: Any, email: str) -> dict[str, Any]:
    return run.esp_lists(email)


def test_crm_to_esp_and_unsubscribe_back(run: Any) -> None:
    server = run.server
    with server.emulator.lock:
        server.emulator.seed(15, 0)
    people = state(server)
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert stats.crm_read == 15
    for email, entry in people.items():
        expected = "unsubscribed" if entry["opted_out"] else "subscribed"
        assert esp_lists(run, email)["1"]["status"] == expected, email
        groups = set(filter(None, (entry["fields"]["interests_c"] or "").split(";")))
        assert set(esp_lists(run, email)["1"]["groups"]) == groups, email
        in_events = f"target_list:{EVENTS_LIST_ID}" in entry["lists"]
        assert ("2" in esp_lists(run, email)) == in_events, email

    # An unsubscribe on the ESP reaches the CRM's address row, keeping the work address.
    target = "contact0-0@example.com"
    assert not people[target]["opted_out"] and len(people[target]["addresses"]) == 2
    with open_side(run.config, "esp") as esp:
        esp.unsubscribe(target, "1")
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert stats.crm_written == 1
    after = state(server)[target]
    assert after["opted_out"] is True and len(after["addresses"]) == 2

    # An opt-out flipped on the address alone (no record saved) still reaches the ESP.
    other = next(e for e, c in people.items() if not c["opted_out"] and e != target)
    time.sleep(1.05)
    control(server, "email_address", {"email": other, "opt_out": True})
    reset_requests(server)
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert esp_lists(run, other)["1"]["status"] == "unsubscribed"
    assert sum(requests_made(server).values()) < 20


def test_leaving_a_target_list_unsubscribes_from_its_list(run: Any) -> None:
    """Removing someone from a target list does not touch their record; the list is
    reconciled with the target list's members on the next diff run (both flavours)."""
    server = run.server
    with server.emulator.lock:
        server.emulator.seed(8, 0)
    assert run().status == "succeeded"
    people = state(server)
    key = f"target_list:{EVENTS_LIST_ID}"
    inside = [e for e, s in people.items() if key in s["lists"]
              and esp_lists(run, e).get("2", {}).get("status") == "subscribed"]
    assert len(inside) >= 2
    leaver, stayer = inside[0], inside[1]
    time.sleep(1.05)
    with server.emulator.lock:
        store_ = server.emulator.store
        store_.remove_member(store_.lists[EVENTS_LIST_ID], "Contacts",
                             people[leaver]["ids"]["sugarcrm"])
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert esp_lists(run, leaver)["2"]["status"] == "unsubscribed"
    assert esp_lists(run, stayer)["2"]["status"] == "subscribed"
    assert run().esp_written == 0  # once


def test_a_record_with_an_invalid_address_is_reported_not_sent(run: Any) -> None:
    """Issue 12.7: Sugar stores whatever address it is given; one that is no address
    never reaches the ESP, and the run names the record (a failed record, exit 1)."""
    import csv

    from crmsync_sugarcrm.emulator.store import EmailLink

    script = "<script>alert(1)</script>@example.com"
    server = run.server
    with server.emulator.lock:
        server.emulator.seed(3, 0)
        store_ = server.emulator.store
        person = store_.create("Contacts", {"first_name": "Evil", "last_name": "E"})
        row = store_.address(script)
        store_._link(person, [EmailLink(address_id=row.id, primary=True, id=store_.new_id())])
    stats = run()
    assert stats.status == "partial" and stats.failed == 1, stats.stopped_reason
    run.esp._load()
    assert len(run.esp.records) == 3
    assert not any("script" in r["email"] for r in run.esp.records.values())
    with open(stats.report, newline="", encoding="utf-8") as report:
        [failed] = list(csv.DictReader(report))
    assert failed["code"] == "invalid_address" and person.id in failed["where"]
