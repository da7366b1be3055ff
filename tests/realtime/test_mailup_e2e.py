"""Both ways against the MailUp emulator over real HTTP: its webhook reaches `serve`
and the CRM shows the contact opted out; a CRM change reaches MailUp."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from crmsync.config import load_config
from crmsync.testing.memory import store
from crmsync.testing.pairs import serving_realtime

from .conftest import CRM_SECRET, ESP_SECRET, FIELDS, crm_event, eventually

mailup = pytest.importorskip("crmsync_mailup.emulator")

PARAMS = {"email": "Email", "list": "IdList", "date": "EventDate", "type": "EventType",
          "reason": "Reason", "groups": "Groups"}


@pytest.fixture
def resubscribe() -> str:
    return "never"


@pytest.fixture
def mailup_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resubscribe: str):
    from crmsync.emulator import EmulatorServer

    emulator = mailup.MailUpEmulator(rate_limit=None, webhook_retry_delays=[0.2, 0.5])
    esp_server = EmulatorServer(emulator).start()
    profile = emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    settings = "\n".join(f"{k} = {_toml(v)}" for k, v in
                         {**profile["settings"], "rate_per_s": 0, "webhook_params": PARAMS}.items())
    path = tmp_path / "crmsync.toml"
    path.write_text(f"""
[state]
url = "sqlite:///state.db"
[crm]
connector = "memory"
[crm.settings]
path = "{tmp_path / 'crm.json'}"
[esp]
connector = "mailup"
[esp.settings]
{settings}
[fields]
FirstName = "name"
LastName = "surname"
[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
opt_out = "OptOut"
[consent]
resubscribe = "{resubscribe}"
[server]
poll = "never"
retry_base_s = 0.05
""")
    config = load_config(path)
    crm = store(path=tmp_path / "crm.json")
    crm.add("ann@example.com", fields=dict(FIELDS))
    crm.add("bob@example.com", fields=dict(FIELDS, FirstName="Bob"))
    try:
        # the first full read: everyone reaches MailUp; the id map is filled
        with serving_realtime(config, environ={"CRMSYNC_HOOK_SECRET_ESP": ESP_SECRET,
                                               "CRMSYNC_HOOK_SECRET_CRM": CRM_SECRET}
                              ) as (service, server):
            # configured as the console's Developer's Corner would, through the control API
            hook = httpx.post(f"{esp_server.url}/_emulator/webhooks", json={
                "url": f"{server.url}/hooks/esp/{ESP_SECRET}/unsubscribe",
                "event": "UNSUBSCRIBE", "method": "POST",
                "params": {"email": "[Email]", "list": "[IdList]", "date": "[EventDate]",
                           "type": "[EventType]", "reason": "[Reason]",
                           "groups": "[Groups]"}})
            assert hook.status_code == 200, hook.text
            yield esp_server, server, crm, service.store
    finally:
        esp_server.stop()


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f'{k} = {_toml(v)}' for k, v in value.items()) + " }"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value).lower() if isinstance(value, bool) else str(value)


def _mailup_status(esp_server, email: str, list_id: str = "1") -> str | None:
    for contact in httpx.get(f"{esp_server.url}/_emulator/state").json()["contacts"]:
        if contact["email"] == email:
            return contact["lists"].get(list_id, {}).get("status")
    return None


def test_mailup_unsubscribe_webhook_opts_out_in_the_crm(mailup_pair) -> None:
    esp_server, _server, crm, state = mailup_pair
    assert _mailup_status(esp_server, "ann@example.com") == "subscribed"
    # the recipient clicks the link in a message
    httpx.post(f"{esp_server.url}/_emulator/unsubscribe",
               json={"email": "ann@example.com", "list": "1"}).raise_for_status()
    eventually(lambda: crm.records[crm.by_email("ann@example.com")]["fields"]["OptOut"]
               == "true")
    eventually(lambda: state.inbox_pending_count() == 0)
    [entry] = [e for e in state.journal(email="ann@example.com") if e["applied_to"] == "crm"]
    assert entry["new_status"] == "unsubscribed" and entry["source"] == "esp:mailup"


def test_crm_change_reaches_mailup(mailup_pair) -> None:
    esp_server, server, crm, _state = mailup_pair
    bob = crm.by_email("bob@example.com")
    response = httpx.post(f"{server.url}/hooks/crm", headers={"X-Crmsync-Secret": CRM_SECRET},
                          json=crm_event("bob@example.com", ids={"memory": bob},
                                         fields=dict(FIELDS, FirstName="Bob", OptOut="true")))
    assert response.status_code == 200
    eventually(lambda: _mailup_status(esp_server, "bob@example.com") == "unsubscribed")


def test_mailup_outage_events_wait_and_none_is_lost(mailup_pair) -> None:
    esp_server, server, crm, state = mailup_pair
    # MailUp answers 503 to the next six calls (the connector's own retries and then the
    # worker's have to ride it out), then recovers
    httpx.post(f"{esp_server.url}/_emulator/faults",
               json={"error_count": 6, "error_status": 503}).raise_for_status()
    for email in ("ann@example.com", "bob@example.com"):
        record = crm.by_email(email)
        response = httpx.post(
            f"{server.url}/hooks/crm", headers={"X-Crmsync-Secret": CRM_SECRET},
            json=crm_event(email, ids={"memory": record}, event_id=f"outage-{email}",
                           fields=dict(FIELDS, OptOut="true")))
        assert response.status_code == 200
    eventually(lambda: _mailup_status(esp_server, "ann@example.com") == "unsubscribed"
               and _mailup_status(esp_server, "bob@example.com") == "unsubscribed",
               timeout=30)
    eventually(lambda: state.inbox_pending_count() == 0)
    assert state.inbox_counts() == {"done": 2} and state.dead_letters() == []
    assert max(e["attempts"] for e in state.inbox_events()) >= 2  # the worker retried


@pytest.mark.parametrize("resubscribe", ["explicit_newer"])
def test_replayed_undated_subscribe_webhook_never_lifts_an_unsubscribe(mailup_pair) -> None:
    """A SUBSCRIBE without [EventDate] has no trustworthy date: replayed after an
    unsubscribe, it must not opt the person back in, whatever the policy."""
    esp_server, server, crm, state = mailup_pair
    httpx.post(f"{esp_server.url}/_emulator/unsubscribe",
               json={"email": "ann@example.com", "list": "1"}).raise_for_status()
    eventually(lambda: crm.records[crm.by_email("ann@example.com")]["fields"]["OptOut"]
               == "true")
    eventually(lambda: state.inbox_pending_count() == 0)
    # a hostile (or confused) sender replays an old recipient-made SUBSCRIBE, undated
    replay = httpx.post(f"{server.url}/hooks/esp/{ESP_SECRET}/subscribe",
                        data={"email": "ann@example.com", "list": "1", "type": "SUBSCRIBE",
                              "EventSource": "RECIPIENT"})
    assert replay.status_code == 200, replay.text
    eventually(lambda: state.inbox_pending_count() == 0)
    crm._load()
    assert crm.records[crm.by_email("ann@example.com")]["fields"]["OptOut"] == "true"
    statuses = [(e["old_status"], e["new_status"]) for e in state.journal(
        email="ann@example.com") if e["list_id"] == "1"]
    assert ("unsubscribed", "subscribed") not in statuses
    assert statuses.count(("subscribed", "unsubscribed")) >= 1
