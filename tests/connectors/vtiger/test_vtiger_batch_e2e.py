"""A batch run end to end: the vTiger emulator against the in-memory ESP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crmsync.runtime import open_side
from crmsync.testing.pairs import MemoryEspPair


@pytest.fixture
def run(tmp_path: Path, vtiger_server, monkeypatch: pytest.MonkeyPatch) -> Any:
    emulator = vtiger_server(contacts=0).emulator
    pair = MemoryEspPair(tmp_path, "vtiger", emulator.demo_profile(), setenv=monkeypatch.setenv)
    pair.emulator = emulator
    return pair


def esp_lists(run: Any, email: str) -> dict[str, Any]:
    return run.esp_lists(email)


def test_crm_to_esp_and_unsubscribe_back(run: Any) -> None:
    emulator = run.emulator
    with emulator.lock:
        emulator.seed(14, 0)
    people = {c["email"].lower(): c for c in emulator.state()["contacts"]}
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert stats.crm_read == 14
    for email, entry in people.items():
        expected = "unsubscribed" if entry["opted_out"] else "subscribed"
        assert esp_lists(run, email)["1"]["status"] == expected, email
    campaign = f"campaign:1x{emulator.campaign_id}"
    for email, entry in people.items():
        assert ("2" in esp_lists(run, email)) == (campaign in entry["lists"]), email

    target = next(e for e, c in people.items() if not c["opted_out"])
    with open_side(run.config, "esp") as esp:
        esp.unsubscribe(target, "1")
    emulator.calls.clear()
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert stats.crm_written == 1
    after = {c["email"].lower(): c for c in emulator.state()["contacts"]}
    assert after[target]["opted_out"] is True
    assert after[target]["fields"]["firstname"] == people[target]["fields"]["firstname"]
    assert "update" not in [c["operation"] for c in emulator.calls]

    emulator.advance(2)
    emulator.update_contact("contact0-1@example.com", {"lastname": "Renamed"})
    stats = run()
    assert stats.status == "succeeded", stats.stopped_reason
    assert stats.esp_written == 1


def test_a_record_with_an_invalid_address_is_reported_not_sent(run: Any) -> None:
    """Issue 12.7: an address that is no address never reaches the ESP, and the run
    names the record (a failed record in the report, exit 1), not a silent skip."""
    import csv

    emulator = run.emulator
    with emulator.lock:
        emulator.seed(3, 0)
        crmid = emulator._insert("Contacts", {
            "firstname": "Evil", "lastname": "E", "emailoptout": "0",
            "email": "<script>alert(1)</script>@example.com", "assigned_user_id": "19x1"},
            emulator.now())
    stats = run()
    assert stats.status == "partial" and stats.failed == 1, stats.stopped_reason
    with open(stats.report, newline="", encoding="utf-8") as report:
        [failed] = list(csv.DictReader(report))
    assert failed["code"] == "invalid_address" and f"x{crmid}" in failed["where"]
