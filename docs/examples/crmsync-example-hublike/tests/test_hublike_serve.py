"""A signed HubLike webhook through `crmsync serve`, over real HTTP, behind a proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hublike_emulator import CLIENT_SECRET, HubLikeEmulator

from crmsync.config import load_config
from crmsync.runtime import build_hooks, open_side, open_store
from crmsync.server import RealtimeService, ServerThread

SECRET = "endpoint-secret-789"
PUBLIC = f"https://hooks.example.com/hooks/crm/{SECRET}"
PROXY = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}


@pytest.fixture
def served(hublike: HubLikeEmulator, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    path = tmp_path / "crmsync.toml"
    path.write_text(f"""
[state]
url = "sqlite:///{tmp_path / 'state.db'}"
[crm]
connector = "hublike"
[crm.settings]
base_url = "{hublike.base_url}"
client_id = "hublike-app"
[esp]
connector = "memory-esp"
[esp.settings]
path = "{tmp_path / 'esp.json'}"
[fields]
lastname = "surname"
[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
opt_out = "hs_email_optout"
[server]
poll = "never"
trusted_proxies = ["127.0.0.1"]
""")
    config = load_config(path)
    env = {"CRMSYNC_HUBLIKE_CLIENT_SECRET": CLIENT_SECRET,
           "CRMSYNC_HUBLIKE_REFRESH_TOKEN": "refresh-456", "CRMSYNC_HOOK_SECRET_CRM": SECRET}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        state = open_store(config)
        service = RealtimeService(config, open_side(config, "crm"), open_side(config, "esp"),
                                  state, hooks=build_hooks(config), environ=env, worker=False)
        server = ServerThread(service).start()
        try:
            yield server.url, service
        finally:
            server.stop()
            service.close()
            state.close()


def test_a_webhook_signed_over_the_public_url_is_accepted(hublike, served) -> None:
    url, service = served
    body, headers = hublike.signed_event(PUBLIC, ["2"])
    answer = httpx.post(f"{url}/hooks/crm/{SECRET}", content=body,
                        headers={**headers, **PROXY})
    assert answer.status_code == 200, answer.text
    assert service.store.inbox_pending_count() == 1  # stored for the worker
    # the same delivery without the proxy's headers was signed over another URL
    again = httpx.post(f"{url}/hooks/crm/{SECRET}", content=body, headers=headers)
    assert again.status_code == 401 and "X-HubLike-Signature-v3" in again.text


def test_a_vendor_outage_while_decoding_asks_the_sender_to_come_back(hublike, served) -> None:
    url, _ = served
    body, headers = hublike.signed_event(PUBLIC, ["2"])
    hublike.faults.update({"error_status": 503, "error_rate": 1.0})
    try:
        answer = httpx.post(f"{url}/hooks/crm/{SECRET}", content=body,
                            headers={**headers, **PROXY}, timeout=60)
    finally:
        hublike.faults.clear()
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "30"
