"""`crmsync serve` finds its endpoint secret in the secrets file (dotenv syntax), and
reading it leaves the process environment alone."""

from __future__ import annotations

import os

import httpx

from .conftest import esp_unsubscribe, write_config


def test_an_exported_hook_secret_in_the_secrets_file_opens_the_endpoint(tmp_path,
                                                                       monkeypatch) -> None:
    from crmsync.config import load_config
    from crmsync.runtime import open_side, open_store
    from crmsync.server import RealtimeService, ServerThread

    monkeypatch.delenv("CRMSYNC_HOOK_SECRET_ESP", raising=False)
    path = write_config(tmp_path)
    path.write_text('secrets_file = ".crmsync.secrets"\n' + path.read_text())
    (tmp_path / ".crmsync.secrets").write_text(
        'export CRMSYNC_HOOK_SECRET_ESP="hook-s3cret"   # given to MailUp\n')
    before = dict(os.environ)
    config = load_config(path)
    state = open_store(config)
    service = RealtimeService(config, open_side(config, "crm"), open_side(config, "esp"),
                              state, worker=False)
    try:
        with ServerThread(service) as server:
            response = httpx.post(f"{server.url}/hooks/esp/hook-s3cret",
                                  json=esp_unsubscribe("ann@example.com", event_id="s-1"))
        assert response.status_code == 200, response.text
    finally:
        state.close()
    assert dict(os.environ) == before
