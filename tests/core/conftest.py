"""A configured CRM <-> ESP pair on the in-memory connectors, with a local file space."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from crmsync.config import Config
from crmsync.runtime import build_batch, open_side, open_store
from crmsync.testing.memory import store


def write_config(tmp: Path, *, mode: str = "files", extra: str = "", resubscribe: str = "never",
                 space: str | None = None, state: str = "sqlite:///state.db",
                 crm_settings: str = "") -> Path:
    path = tmp / "crmsync.toml"
    path.write_text(f"""
[state]
url = "{state}"

[crm]
connector = "memory"
[crm.settings]
path = "{tmp / 'crm.json'}"
page_size = 3
{crm_settings}

[esp]
connector = "memory-esp"
mode = "{mode}"
[esp.settings]
path = "{tmp / 'esp.json'}"

[files]
url = "{space or 'file://' + str(tmp / 'space')}"
stable_s = 0  # the tests write each export whole before a run (tests/batch: the wait)

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

[consent]
resubscribe = "{resubscribe}"
{extra}
""")
    return path


class Pair:
    """The CRM and ESP stores, and a way to run a sync as the CLI would."""

    def __init__(self, tmp: Path, config_path: Path) -> None:
        from crmsync.config import load_config

        self.tmp = tmp
        self.config: Config = load_config(config_path)
        self.crm = store(path=tmp / "crm.json")
        self.esp = store(path=tmp / "esp.json")
        self.space = tmp / "space"

    def sync(self, **kwargs: Any):
        state = open_store(self.config)
        try:
            with open_side(self.config, "crm") as crm, open_side(self.config, "esp") as esp:
                return build_batch(self.config, crm, esp, state).run(**kwargs)
        finally:
            state.close()

    def esp_connector(self):
        return open_side(self.config, "esp")

    def esp_import(self) -> int:
        """The ESP imports every complete file in in/ (as MailUp does on arrival)."""
        inbox = self.space / "in"
        count = 0
        with self.esp_connector() as esp:
            for manifest in sorted(inbox.glob("*.manifest.json")):
                data = (inbox / manifest.name[: -len(".manifest.json")]).read_bytes()
                count += esp.import_file(data)
                done = inbox / "done"
                done.mkdir(exist_ok=True)
                (inbox / manifest.name[: -len(".manifest.json")]).rename(
                    done / manifest.name[: -len(".manifest.json")])
                manifest.rename(done / manifest.name)
        return count

    def esp_unsubscribe(self, email: str, list_id: str = "1", *,
                        export: str | None = "unsubscribed-1.csv") -> None:
        """A recipient unsubscribes at the ESP, which then drops its export (files mode)."""
        with self.esp_connector() as esp:
            esp.unsubscribe(email, list_id)
        if export:
            self.esp_export(export)

    def esp_export(self, name: str = "unsubscribed-1.csv") -> None:
        with self.esp_connector() as esp:
            (self.space / "out").mkdir(parents=True, exist_ok=True)
            (self.space / "out" / name).write_bytes(esp.export_unsubscribed())

    def esp_status(self, email: str, list_id: str = "1") -> str | None:
        self.esp._load()
        record_id = self.esp.by_email(email)
        if record_id is None:
            return None
        value = self.esp.records[record_id]["lists"].get(list_id)
        return value["status"] if value else None

    def crm_record(self, email: str) -> dict[str, Any]:
        self.crm._load()
        return self.crm.records[self.crm.by_email(email)]

    def journal(self, email: str | None = None):
        state = open_store(self.config)
        try:
            return state.journal(email=email)
        finally:
            state.close()


def _postgres_url() -> str | None:
    url = os.environ.get("CRMSYNC_TEST_POSTGRES_URL")
    if not url and os.environ.get("CI"):
        pytest.fail("CI=true but CRMSYNC_TEST_POSTGRES_URL is not set: the PostgreSQL "
                    "tests must run in CI (.ci/run starts the server)")
    return url


@contextlib.contextmanager
def fresh_postgres():
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    url = _postgres_url()
    if not url:
        pytest.skip("set CRMSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests")
    name = f"crmsync_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    with fresh_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def pair(request, tmp_path: Path):
    with contextlib.ExitStack() as stack:
        state = "sqlite:///state.db"
        if request.param == "postgresql":
            state = stack.enter_context(fresh_postgres())
        yield _seeded_pair(tmp_path, state)


def _seeded_pair(tmp_path: Path, state: str, *, mode: str = "files") -> Pair:
    path = write_config(tmp_path, state=state, mode=mode)
    pair = Pair(tmp_path, path)
    pair.crm.add("ann@example.com", fields={"FirstName": "Ann", "LastName": "A",
                                            "OptOut": "false", "Interests": "news;tech"},
                 memberships={"campaign:7": "Responded"})
    pair.crm.add("bob@example.com", fields={"FirstName": "Bob", "LastName": "B",
                                            "OptOut": "false", "Interests": ""})
    pair.crm.add("cyd@example.com", fields={"FirstName": "Cyd", "LastName": "C",
                                            "OptOut": "true", "Interests": "news"})
    pair.crm.add("dee@example.com", fields={"FirstName": "Dee", "LastName": "D",
                                            "OptOut": "false"},
                 memberships={"campaign:7": "Sent"})
    return pair
