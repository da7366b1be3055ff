"""A real-time service on the in-memory connectors, served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from crmsync.config import Config, load_config
from crmsync.contract import Connector
from crmsync.server import RealtimeService, ServerThread
from crmsync.testing import eventually  # noqa: F401 - the tests here import it from this module
from crmsync.testing.memory import MemoryStore, store
from crmsync.testing.pairs import serving_realtime

ESP_SECRET = "esp-secret-123"
CRM_SECRET = "crm-secret-456"

FIELDS = {"FirstName": "Ann", "LastName": "A", "OptOut": "false", "Interests": ""}


def write_config(tmp: Path, *, server: str = "", extra: str = "",
                 state: str = "sqlite:///state.db") -> Path:
    path = tmp / "crmsync.toml"
    path.write_text(f"""
[state]
url = "{state}"

[crm]
connector = "memory"
[crm.settings]
path = "{tmp / 'crm.json'}"

[esp]
connector = "memory-esp"
[esp.settings]
path = "{tmp / 'esp.json'}"

[fields]
FirstName = "name"
LastName = "surname"

[[lists]]
name = "Newsletter"
esp_list = 1
members = "all"
opt_out = "OptOut"
groups = {{ field = "Interests" }}

[[lists]]
name = "Events"
esp_list = 2
members = "campaign:7"
status = {{ Responded = "subscribed", "Opted Out" = "unsubscribed", Sent = "pending" }}

[server]
{_server_table(server)}
{extra}
""")
    return path


_SERVER_DEFAULTS = {"poll": '"never"', "retry_base_s": "0.05", "retry_max_s": "0.5",
                    "poll_interval_s": "0.2"}


def _server_table(lines: str) -> str:
    given = {line.split("=", 1)[0].strip() for line in lines.splitlines() if "=" in line}
    defaults = [f"{k} = {v}" for k, v in _SERVER_DEFAULTS.items() if k not in given]
    return "\n".join([*defaults, lines])


def crm_event(email: str, *, fields: dict[str, str] | None = None,
              memberships: dict[str, str | None] | None = None, event_id: str | None = None,
              ids: dict[str, str] | None = None) -> dict[str, Any]:
    change: dict[str, Any] = {"email": email, "fields": fields or {},
                              "memberships": memberships or {}, "ids": ids or {}}
    if event_id:
        change["event_id"] = event_id
    return {"changes": [change]}


def esp_unsubscribe(email: str, list_id: str = "1", *, event_id: str | None = None,
                    at: str | None = None) -> dict[str, Any]:
    sub: dict[str, Any] = {"list_id": list_id, "status": "unsubscribed",
                           "reason": "unsubscribe link"}
    change: dict[str, Any] = {"email": email, "subscriptions": {list_id: sub},
                              "source": "memory-esp"}
    if at:
        sub["changed_at"] = at
        change["occurred_at"] = at
    if event_id:
        change["event_id"] = event_id
    return {"changes": [change]}


def status_event(email: str, status: str, at: datetime, event_id: str) -> dict[str, Any]:
    """An ESP webhook: ``email``'s status on list 1 became ``status`` at ``at``."""
    stamp = at.isoformat()
    return {"changes": [{"email": email, "source": "memory-esp", "event_id": event_id,
                         "occurred_at": stamp,
                         "subscriptions": {"1": {"list_id": "1", "status": status,
                                                 "changed_at": stamp,
                                                 "explicit": status == "subscribed",
                                                 "reason": "webhook"}}}]}


class Running:
    """A served RealtimeService, its stores, and an HTTP client pointed at it."""

    def __init__(self, tmp: Path, config: Config, service: RealtimeService,
                 server: ServerThread) -> None:
        self.tmp = tmp
        self.config = config
        self.service = service
        self.server = server
        self.url = server.url
        self.http = httpx.Client(base_url=server.url, timeout=10)
        self.crm: MemoryStore = store(path=tmp / "crm.json")
        self.esp: MemoryStore = store(path=tmp / "esp.json")

    @property
    def state(self):
        return self.service.store

    def post_esp(self, payload: Any, **kwargs: Any) -> httpx.Response:
        return self.http.post(f"/hooks/esp/{ESP_SECRET}", json=payload, **kwargs)

    def post_crm(self, payload: Any, *, headers: dict[str, str] | None = None,
                 **kwargs: Any) -> httpx.Response:
        return self.http.post("/hooks/crm", json=payload,
                              headers={"X-Crmsync-Secret": CRM_SECRET, **(headers or {})},
                              **kwargs)

    def crm_record(self, email: str) -> dict[str, Any]:
        with self.crm.lock:
            return self.crm.records[self.crm.by_email(email)]

    def esp_list(self, email: str, list_id: str = "1") -> str | None:
        with self.esp.lock:
            record_id = self.esp.by_email(email)
            if record_id is None:
                return None
            value = self.esp.records[record_id]["lists"].get(list_id)
            return value["status"] if value else None

    def journal(self, email: str | None = None) -> list[dict[str, Any]]:
        return self.state.journal(email=email)

    def idle(self) -> bool:
        return self.state.inbox_pending_count() == 0


@pytest.fixture
def serve_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Running]]:
    """``serve_pair(server="...", esp=connector, env={...})`` starts a served service."""
    def start(*, server: str = "", extra: str = "", esp: Connector | None = None,
              crm: Connector | None = None, env: dict[str, str] | None = None,
              prime: bool = True, worker: bool = True,
              state: str = "sqlite:///state.db") -> Running:
        config = load_config(write_config(tmp_path, server=server, extra=extra, state=state))
        crm_store = store(path=tmp_path / "crm.json")
        if prime and not crm_store.records:
            crm_store.add("ann@example.com", fields=dict(FIELDS, Interests="news"),
                          memberships={"campaign:7": "Responded"})
            crm_store.add("bob@example.com", fields=dict(FIELDS, FirstName="Bob",
                                                         LastName="B"))
        environ = {"CRMSYNC_HOOK_SECRET_ESP": ESP_SECRET, "CRMSYNC_HOOK_SECRET_CRM": CRM_SECRET}
        environ.update(env or {})
        # primed: the first full read fills the ESP and the id map
        service, http_server = stack.enter_context(serving_realtime(
            config, environ=environ, crm=crm, esp=esp, prime=prime, worker=worker))
        running = Running(tmp_path, config, service, http_server)
        stack.callback(running.http.close)
        return running

    with contextlib.ExitStack() as stack:
        yield start


def fresh_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on CRMSYNC_TEST_POSTGRES_URL's server, dropped
    afterwards (skipped without that server; a failure under CI=true)."""
    from sqlalchemy import create_engine, text

    url = os.environ.get("CRMSYNC_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI=true but CRMSYNC_TEST_POSTGRES_URL is not set")
        pytest.skip("set CRMSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{url.rpartition('/')[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> Iterator[str]:
    """A fresh state store URL: SQLite, and PostgreSQL when CRMSYNC_TEST_POSTGRES_URL
    names a server (a new database per test, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    yield from fresh_database("crmsync_rt")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    yield from fresh_database("crmsync_scale")
