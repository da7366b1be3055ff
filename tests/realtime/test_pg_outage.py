"""PostgreSQL away under `crmsync serve --no-worker`: the sender is told to send again
(503, nothing acknowledged), the receiver stays up, and once the database is back the
redelivered event is stored and applied, once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from crmsync.cli import cli
from crmsync.config import load_config
from crmsync.emulator import free_port
from crmsync.runtime import open_store
from crmsync.testing.memory import store

from .conftest import ESP_SECRET, FIELDS, eventually, write_config

CRMSYNC = str(Path(sys.executable).with_name("crmsync"))


def _database(url: str, *, allow: bool) -> None:
    """Let connections in again, or refuse them and end every one open now (the
    database's owner may: no superuser needed)."""
    name = url.rpartition("/")[2]
    admin = create_engine(url.rpartition("/")[0] + "/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}'))
            if not allow:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :name"), {"name": name})
    finally:
        admin.dispose()


def test_postgresql_away_gets_a_503_and_the_redelivered_event_is_applied_once(
        tmp_path: Path, pg_url: str) -> None:
    pytest.importorskip("procrastinate")
    email = "ann@example.com"
    crm = store(path=tmp_path / "crm.json")
    crm.add(email, fields=dict(FIELDS))
    path = write_config(tmp_path, state=pg_url)
    assert CliRunner().invoke(cli, ["--config", str(path), "sync", "--full"]).exit_code == 0
    env = {**os.environ, "CRMSYNC_PLUGINS": "", "CRMSYNC_HOOK_SECRET_ESP": ESP_SECRET}
    port = free_port()
    at = datetime.now(UTC).isoformat()
    event = {"changes": [{"email": email, "source": "memory-esp", "event_id": "out-1",
                          "occurred_at": at,
                          "subscriptions": {"1": {"list_id": "1", "status": "unsubscribed",
                                                  "changed_at": at,
                                                  "reason": "unsubscribe link"}}}]}
    with contextlib.ExitStack() as stack:
        log = open(tmp_path / "serve.log", "wb")  # closed with the stack
        stack.callback(log.close)
        server = subprocess.Popen([CRMSYNC, "--config", str(path), "serve", "--no-worker",
                                   "--port", str(port)], cwd=tmp_path, stdout=log,
                                  stderr=subprocess.STDOUT, env=env)
        stack.callback(server.kill)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        stack.callback(http.close)

        def up() -> bool:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                return http.get("/healthz").status_code == 200
            return False

        assert eventually(up, timeout=60)
        _database(pg_url, allow=False)
        stack.callback(_database, pg_url, allow=True)
        away = http.post(f"/hooks/esp/{ESP_SECRET}", json=event)
        # not acknowledged: the sender keeps the event and sends it again later
        assert away.status_code == 503, away.text
        assert away.headers.get("retry-after")
        assert "send again later" in away.text
        assert http.get("/healthz").status_code == 200  # the receiver itself is up
        assert http.get("/readyz").status_code == 503
        _database(pg_url, allow=True)
        back = http.post(f"/hooks/esp/{ESP_SECRET}", json=event)
        assert back.status_code == 200, back.text
        assert http.post(f"/hooks/esp/{ESP_SECRET}", json=event).status_code == 200  # again
        worker = subprocess.Popen([CRMSYNC, "--config", str(path), "worker"], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
        stack.callback(worker.kill)
        config = load_config(path)
        state = open_store(config)
        stack.callback(state.close)
        assert eventually(lambda: state.inbox_pending_count() == 0
                          and state.inbox_counts().get("done") == 1, timeout=60)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        history = [e["new_status"] for e in state.journal(email=email)
                   if str(e.get("list_id")) == "1"]
        assert history == ["subscribed", "unsubscribed"]
