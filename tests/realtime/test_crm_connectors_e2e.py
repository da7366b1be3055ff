"""Each CRM connector against its emulator over real HTTP, with `serve` in between: an
ESP unsubscribe webhook opts the contact out in the CRM emulator, and a change made in
the CRM (read by the poller) reaches the ESP."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crmsync.config import load_config
from crmsync.emulator import EmulatorServer
from crmsync.errors import PluginError
from crmsync.registry import load_emulator
from crmsync.testing.memory import store
from crmsync.testing.pairs import serving_realtime, write_profile_config

from .conftest import CRM_SECRET, ESP_SECRET, esp_unsubscribe, eventually


def _crm_contact(emulator_url: str, email: str) -> dict[str, Any]:
    contacts = httpx.get(f"{emulator_url}/_emulator/state").json()["contacts"]
    return next(c for c in contacts if c["email"] == email)


@contextlib.contextmanager
def _served(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, poll: str,
            crm_secret: bool = False) -> Iterator[tuple[Any, ...]]:
    try:
        emulator = load_emulator(name)(contacts=3, seed=1)
    except PluginError as exc:
        pytest.skip(f"no {name} emulator: {exc}")
    crm_server = EmulatorServer(emulator).start()
    profile = emulator.demo_profile()
    for key, value in profile["secrets"].items():
        monkeypatch.setenv(key, value)
    loaded = load_config(write_profile_config(
        tmp_path / "crmsync.toml", crm=name, profile=profile,
        esp={"connector": "memory-esp", "settings": {"path": str(tmp_path / "esp.json")}},
        tables={"server": {"poll": poll, "poll_interval_s": 0.2, "retry_base_s": 0.1},
                "sync": {"overlap_s": 0}}))
    environ = {"CRMSYNC_HOOK_SECRET_ESP": ESP_SECRET}
    if crm_secret:
        environ["CRMSYNC_HOOK_SECRET_CRM"] = CRM_SECRET
    opt_out = next(item["opt_out"] for item in profile["lists"] if item["esp_list"] == "1")
    try:
        # the first full read: the ESP and the id map know everyone
        with serving_realtime(loaded, environ=environ) as (service, server):
            yield (crm_server.url, server.url, store(path=tmp_path / "esp.json"), opt_out,
                   service.store)
    finally:
        crm_server.stop()


@pytest.fixture(params=["salesforce", "sugarcrm", "vtiger"])
def crm_pair(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with _served(request.param, tmp_path, monkeypatch, poll="always") as served:
        yield served


def _esp_status(esp, email: str, list_id: str = "1") -> str | None:
    with esp.lock:
        record_id = esp.by_email(email)
        value = esp.records[record_id]["lists"].get(list_id) if record_id else None
    return value["status"] if value else None


def test_esp_unsubscribe_reaches_the_crm_and_a_crm_change_reaches_the_esp(crm_pair) -> None:
    crm_url, serve_url, esp, opt_out, state = crm_pair
    first, second = "contact1-0@example.com", "contact1-1@example.com"
    assert _esp_status(esp, first) == "subscribed"
    assert _crm_contact(crm_url, first)["opted_out"] is False
    response = httpx.post(f"{serve_url}/hooks/esp/{ESP_SECRET}",
                          json=esp_unsubscribe(first, event_id="crm-e2e-1"))
    assert response.status_code == 200
    eventually(lambda: _crm_contact(crm_url, first)["opted_out"] is True, timeout=20)
    # a user opts the second contact out in the CRM; the poller brings it to the ESP
    assert _esp_status(esp, second) == "subscribed"
    httpx.post(f"{crm_url}/_emulator/update",
               json={"email": second, "fields": {opt_out: "true"}}).raise_for_status()
    eventually(lambda: _esp_status(esp, second) == "unsubscribed", timeout=20)
    # crmsync's own CRM write, read back by the poller, is not sent out again as news
    eventually(lambda: state.inbox_pending_count() == 0)
    to_esp = [e for e in state.journal(email=first) if e["applied_to"] == "esp"
              and e["list_id"] == "1" and e["new_status"] == "unsubscribed"]
    assert to_esp == []


def test_salesforce_outbound_message_reaches_the_esp_without_polling(tmp_path,
                                                                     monkeypatch) -> None:
    with _served("salesforce", tmp_path, monkeypatch, poll="never",
                 crm_secret=True) as (crm_url, serve_url, esp, opt_out, state):
        email = "contact1-2@example.com"
        assert _esp_status(esp, email) == "subscribed"
        httpx.post(f"{crm_url}/_emulator/salesforce/outbound", json={
            "url": f"{serve_url}/hooks/crm/{CRM_SECRET}"}).raise_for_status()
        httpx.post(f"{crm_url}/_emulator/update",
                   json={"email": email, "fields": {opt_out: "true"}}).raise_for_status()
        eventually(lambda: _esp_status(esp, email) == "unsubscribed", timeout=20)
        eventually(lambda: state.inbox_pending_count() == 0)
        assert state.inbox_counts().get("done", 0) >= 1
        log = httpx.get(f"{crm_url}/_emulator/salesforce/outbound").json()
        assert log and all(entry.get("acked") for entry in log)
