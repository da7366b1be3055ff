"""Every inbound endpoint of `crmsync serve` under a corpus of hostile requests kept as
data (tests/realtime/data/hostile_requests.json; issue 12, "Done when").

Served: each CRM connector that can be pushed to (Salesforce Outbound Messages, Sugar
Web Logic Hooks, vTiger webhooks) on its emulator, with MailUp's webhook on the MailUp
emulator, the subscription form and POST /send. For every request: a 4xx (the one the
corpus names), and, once the corpus has run, nothing stored in the inbox or the
journal, no call made to either vendor, and no secret in any answer or log line.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crmsync.config import load_config
from crmsync.emulator import EmulatorServer
from crmsync.registry import load_emulator
from crmsync.runtime import build_hooks, open_side, open_store
from crmsync.server import RealtimeService, ServerThread

tomli_w = pytest.importorskip("tomli_w")

CORPUS = json.loads((Path(__file__).parent / "data" / "hostile_requests.json").read_text())
REQUESTS: list[dict[str, Any]] = CORPUS["requests"]
SECRETS = {"ESP_SECRET": "esp-hook-secret-7f3a9c", "CRM_SECRET": "crm-hook-secret-2b8e1d",
           "SEND_TOKEN": "send-token-5c6d0e", "FORM_SECRET": "form-secret-9a1b2c"}
MAILUP_PARAMS = {"email": "Email", "list": "IdList", "date": "EventDate", "type": "EventType",
                 "reason": "Reason", "groups": "Groups"}
CRMS = ["salesforce", "sugarcrm", "vtiger"]


def test_the_corpus_is_large_and_covers_every_endpoint() -> None:
    assert len(REQUESTS) >= 100
    targets = {item["target"] for item in REQUESTS}
    assert targets == {"esp", "crm", "form", "send", "any"}
    assert {item.get("crm") for item in REQUESTS if item.get("crm")} == set(CRMS)
    assert len({item["id"] for item in REQUESTS}) == len(REQUESTS)


class Served:
    def __init__(self, name: str, url: str, service: RealtimeService,
                 vendors: list[Any], secrets: list[str]) -> None:
        self.name = name
        self.url = url
        self.service = service
        self.vendors = vendors
        self.secrets = secrets


@pytest.fixture(params=CRMS)
def served(request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    from crmsync_mailup.emulator import MailUpEmulator

    name = request.param
    crm_emulator = load_emulator(name)(contacts=3, seed=1)
    esp_emulator = MailUpEmulator(rate_limit=None)
    with EmulatorServer(crm_emulator, tls=bool(getattr(crm_emulator, "tls", False))), \
            EmulatorServer(esp_emulator):
        crm_profile, esp_profile = crm_emulator.demo_profile(), esp_emulator.demo_profile()
        vendor_secrets = {**crm_profile["secrets"], **esp_profile["secrets"]}
        for key, value in vendor_secrets.items():
            monkeypatch.setenv(key, value)
        config = {
            "state": {"url": "sqlite:///state.db"},
            "crm": {"connector": name, "settings": {
                k: v for k, v in crm_profile["settings"].items() if v is not None}},
            "esp": {"connector": "mailup", "mode": "api", "settings": {
                **{k: v for k, v in esp_profile["settings"].items() if v is not None},
                "rate_per_s": 0, "webhook_params": MAILUP_PARAMS}},
            "fields": crm_profile["fields"],
            "lists": crm_profile["lists"],
            "server": {"poll": "never", "max_body_bytes": 200_000, "form_rate_per_minute": 0,
                       "retry_base_s": 0.05},
        }
        path = tmp_path / "crmsync.toml"
        path.write_text(tomli_w.dumps(config))
        loaded = load_config(path)
        store = open_store(loaded)
        environ = {"CRMSYNC_HOOK_SECRET_ESP": SECRETS["ESP_SECRET"],
                   "CRMSYNC_HOOK_SECRET_CRM": SECRETS["CRM_SECRET"],
                   "CRMSYNC_SEND_TOKEN": SECRETS["SEND_TOKEN"],
                   "CRMSYNC_FORM_SECRET": SECRETS["FORM_SECRET"]}
        service = RealtimeService(loaded, open_side(loaded, "crm"), open_side(loaded, "esp"),
                                  store, hooks=build_hooks(loaded), environ=environ)
        server = ServerThread(service).start()
        secrets = [*SECRETS.values(), *(v for v in vendor_secrets.values() if len(v) >= 6)]
        try:
            yield Served(name, server.url, service, [crm_emulator, esp_emulator], secrets)
        finally:
            server.stop()
            service.close()
            store.close()


def _fill(text: str) -> str:
    for key, value in SECRETS.items():
        text = text.replace("{" + key + "}", value)
    return text


def _send(client: httpx.Client, item: dict[str, Any]) -> httpx.Response:
    headers = {k: _fill(v) for k, v in item.get("headers", {}).items()}
    kwargs: dict[str, Any] = {"headers": headers}
    if "query" in item:
        kwargs["params"] = item["query"]
    if "json" in item:
        kwargs["json"] = item["json"]
    elif "form" in item or item.get("csrf"):
        data = dict(item.get("form") or {})
        if item.get("csrf"):
            page = client.get("/subscribe")
            data.setdefault("csrf_token", re.search(r'name="csrf_token" value="([^"]+)"',
                                                    page.text).group(1))
        if "body" in item or "body_b64" in item:
            kwargs["content"] = _body(item)
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        else:
            kwargs["data"] = data
    elif "repeat" in item:
        kwargs["content"] = (item["repeat"]["unit"] * item["repeat"]["times"]).encode()
    elif "body" in item or "body_b64" in item:
        kwargs["content"] = _body(item)
    return client.request(item["method"], _fill(item["path"]), **kwargs)


def _body(item: dict[str, Any]) -> bytes:
    if "body_b64" in item:
        return base64.b64decode(item["body_b64"])
    return str(item.get("body", "")).encode()


def _snapshot(vendors: list[Any]) -> list[tuple[dict[str, int], str]]:
    out = []
    for emulator in vendors:
        with emulator.lock:
            out.append((dict(emulator.requests), json.dumps(emulator.state(), sort_keys=True,
                                                            default=str)))
    return out


def test_every_hostile_request_is_refused_and_changes_nothing(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    before = _snapshot(served.vendors)
    wrong: list[str] = []
    leaks: list[str] = []
    ran = 0
    with httpx.Client(base_url=served.url, timeout=60) as client:
        for item in REQUESTS:
            if item.get("crm") not in (None, served.name):
                continue
            ran += 1
            answer = _send(client, item)
            if answer.status_code not in item["expect"]:
                wrong.append(f"{item['id']}: {answer.status_code} {answer.text[:160]!r}")
            seen = answer.text + json.dumps(dict(answer.headers))
            leaks += [f"{item['id']} answer" for secret in served.secrets if secret in seen]
            client.cookies.clear()
    assert ran >= 100
    assert wrong == []
    assert leaks == []
    store = served.service.store
    assert store.inbox_counts() == {}
    assert store.journal() == []
    after = _snapshot(served.vendors)
    # the CRM may have been read (vTiger's decoder describes the module), never changed;
    # the ESP was not called at all: nothing sent, nothing subscribed
    assert after[0][1] == before[0][1]
    assert after[1] == before[1]
    server_logs = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert [r.getMessage()[:120] for r in server_logs
            if any(secret in r.getMessage() for secret in served.secrets)] == []
