"""Real time end to end: Outbound Messages into `crmsync serve`, ESP webhooks back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crmsync.config import load_config
from crmsync.testing import eventually
from crmsync.testing.memory import store
from crmsync.testing.pairs import serving_realtime, write_profile_config
from crmsync_salesforce.emulator import SalesforceEmulator

CRM_SECRET = "crm-secret-for-outbound"
ESP_SECRET = "esp-secret-for-hooks"


@pytest.fixture
def served(tmp_path: Path, emulator: SalesforceEmulator,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    profile = emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    config = load_config(write_profile_config(
        tmp_path / "crmsync.toml", crm="salesforce",
        profile={**profile, "fields": {"FirstName": "name", "LastName": "surname"},
                 "lists": [{"name": "Newsletter", "esp_list": 1, "members": "all",
                            "opt_out": "HasOptedOutOfEmail"}]},
        esp={"connector": "memory-esp", "settings": {"path": str(tmp_path / "esp.json")}},
        tables={"server": {"poll": "never", "retry_base_s": 0.05, "retry_max_s": 0.5}}))
    with emulator.lock:
        emulator.seed(3, 0)
        for record in emulator.org.records["Contact"].values():
            record["HasOptedOutOfEmail"] = False
    # the first full read fills the ESP and the id map
    with serving_realtime(config, environ={"CRMSYNC_HOOK_SECRET_CRM": CRM_SECRET,
                                           "CRMSYNC_HOOK_SECRET_ESP": ESP_SECRET}
                          ) as (service, server):
        with emulator.lock:
            emulator.outbound_url = f"{server.url}/hooks/crm/{CRM_SECRET}"
        try:
            yield server, store(path=tmp_path / "esp.json"), service
        finally:
            with emulator.lock:
                emulator.outbound_url = None
            emulator.flush_outbound()


def esp_status(esp: Any, email: str) -> str | None:
    with esp.lock:
        record_id = esp.by_email(email)
        value = esp.records[record_id]["lists"].get("1") if record_id else None
        return value["status"] if value else None


def test_outbound_message_opt_out_reaches_the_esp(served: Any,
                                                  emulator: SalesforceEmulator) -> None:
    _, esp, _ = served
    assert esp_status(esp, "contact0-1@example.com") == "subscribed"
    emulator.update_contact("contact0-1@example.com", {"HasOptedOutOfEmail": "true"})
    [delivery] = emulator.flush_outbound()
    assert delivery["acked"] is True and delivery["status"] == 200
    eventually(lambda: esp_status(esp, "contact0-1@example.com") == "unsubscribed")
    assert esp_status(esp, "contact0-2@example.com") == "subscribed"


def test_redelivered_notification_is_stored_once(served: Any,
                                                 emulator: SalesforceEmulator) -> None:
    server, _, service = served
    record = next(iter(emulator.org.records["Contact"].values()))
    body = emulator._outbound_xml([("04l000000000000777", record)])
    with httpx.Client() as http:
        for _ in range(2):  # Salesforce delivers at least once
            answer = http.post(f"{server.url}/hooks/crm/{CRM_SECRET}", content=body,
                               headers={"Content-Type": "text/xml"})
            assert answer.status_code == 200 and b"<Ack>true</Ack>" in answer.content
    eventually(lambda: service.store.inbox_pending_count() == 0)
    with httpx.Client() as http:
        wrong = http.post(f"{server.url}/hooks/crm/{CRM_SECRET}",
                          content=body.replace(b"00D5g000004XyZ1", b"00D5g000009QwEr"))
    assert wrong.status_code == 401
