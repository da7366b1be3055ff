"""Real time end to end: vTiger Cloud webhook deliveries and polling with sync, served by
``crmsync serve`` (RealtimeService over real HTTP) between the vTiger emulator and the
in-memory ESP."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from crmsync.config import load_config
from crmsync.testing import eventually
from crmsync.testing.memory import store
from crmsync.testing.pairs import serving_realtime, write_profile_config

CRM_SECRET = "crm-secret-456"
ESP_SECRET = "esp-secret-123"


eventually = functools.partial(eventually, timeout=15.0)


@pytest.fixture
def served(tmp_path: Path, vtiger_server, monkeypatch: pytest.MonkeyPatch):
    server = vtiger_server(contacts=9)
    emulator = server.emulator
    profile = emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    config = load_config(write_profile_config(
        tmp_path / "crmsync.toml", crm="vtiger", profile=profile,
        esp={"connector": "memory-esp", "settings": {"path": str(tmp_path / "esp.json")}},
        tables={"server": {"poll": "never", "retry_base_s": 0.05, "retry_max_s": 0.5,
                           "poll_interval_s": 0.2}}))
    esp = store(path=tmp_path / "esp.json")

    def esp_status(email: str, list_id: str = "1") -> str | None:
        with esp.lock:
            record_id = esp.by_email(email)
            value = esp.records[record_id]["lists"].get(list_id) if record_id else None
            return value["status"] if value else None

    def esp_fields(email: str) -> dict[str, Any]:
        with esp.lock:
            return dict(esp.records[esp.by_email(email)]["fields"])

    # the first full read fills the ESP and the id map
    with serving_realtime(config, environ={"CRMSYNC_HOOK_SECRET_CRM": CRM_SECRET,
                                           "CRMSYNC_HOOK_SECRET_ESP": ESP_SECRET}
                          ) as (service, http_server), \
            httpx.Client(base_url=http_server.url, timeout=10) as http:
        yield type("Served", (), {"http": http, "emulator": emulator, "service": service,
                                  "esp_status": staticmethod(esp_status),
                                  "esp_fields": staticmethod(esp_fields)})


def test_a_vtiger_cloud_webhook_reaches_the_esp(served) -> None:
    assert served.esp_status("contact0-1@example.com") == "subscribed"
    served.emulator.update_contact("contact0-1@example.com", {"emailoptout": "true"})
    record = served.emulator.contact("contact0-1@example.com")
    response = served.http.post(
        f"/hooks/crm/{CRM_SECRET}",
        content=urlencode({"id": served.emulator.ws_id(record), "email": "contact0-1@example.com",
                           "emailoptout": "1", "modifiedtime": record.fields["modifiedtime"],
                           "firstname": "First1", "lastname": "Last1"}),
        headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    eventually(lambda: served.esp_status("contact0-1@example.com") == "unsubscribed")
    forged = served.http.post("/hooks/crm/wrong-secret", content=b"id=12x3&email=a@b.co",
                              headers={"content-type": "application/x-www-form-urlencoded"})
    assert forged.status_code == 401


def test_an_esp_unsubscribe_is_written_to_vtiger_with_revise(served) -> None:
    served.emulator.calls.clear()
    change = {"email": "contact0-2@example.com", "source": "memory-esp", "event_id": "u-1",
              "subscriptions": {"1": {"list_id": "1", "status": "unsubscribed",
                                      "reason": "unsubscribe link"}}}
    response = served.http.post(f"/hooks/esp/{ESP_SECRET}", json={"changes": [change]})
    assert response.status_code == 200
    eventually(lambda: served.emulator.contact("contact0-2@example.com").fields.get(
        "emailoptout") == "1")
    operations = [c["operation"] for c in served.emulator.calls]
    assert "revise" in operations and "update" not in operations
    assert served.emulator.contact("contact0-2@example.com").fields["firstname"] == "First2"


def test_polling_with_sync_sees_an_opt_out_made_in_vtiger(served) -> None:
    served.emulator.advance(2)
    served.emulator.update_contact("contact0-3@example.com", {"emailoptout": "true"})
    served.service.worker.poll_once()
    eventually(lambda: served.esp_status("contact0-3@example.com") == "unsubscribed")
    assert any(c["operation"] == "sync" for c in served.emulator.calls)


def test_a_webhook_for_a_campaign_member_keeps_its_campaign_list(served) -> None:
    assert served.esp_status("contact0-3@example.com", "2") == "subscribed"
    record = served.emulator.contact("contact0-3@example.com")
    response = served.http.post(
        f"/hooks/crm/{CRM_SECRET}",
        content=urlencode({"id": served.emulator.ws_id(record), "email": "contact0-3@example.com",
                           "emailoptout": "0", "firstname": "Renamed", "lastname": "Last3",
                           "cf_901": "", "modifiedtime": record.fields["modifiedtime"]}),
        headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    eventually(lambda: served.esp_fields("contact0-3@example.com").get("name") == "Renamed")
    assert served.esp_status("contact0-3@example.com", "2") == "subscribed"
    assert served.esp_status("contact0-3@example.com", "1") == "subscribed"
