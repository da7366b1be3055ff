"""What the live tests share: a CRM + in-memory ESP configuration, and the ESP's view.

The CRM is judged by reading it back through its own API (``raw`` helpers in each
test module), the ESP by reading the in-memory ESP's store.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crmsync.config import Config, load_config
from crmsync.runtime import open_side
from crmsync.testing.memory import store
from crmsync.testing.pairs import sync_once, write_profile_config

SEEDED = 250  # contacts seeded through the CRM's API for the whole-read check


class Live:
    """One crmsync setup (config, state store, ESP) against one real CRM."""

    def __init__(self, tmp: Path, *, crm: str, settings: dict[str, Any],
                 fields: dict[str, str], lists: list[dict[str, Any]], name: str = "live") -> None:
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.esp_path = self.dir / "esp.json"
        self.config: Config = load_config(write_profile_config(
            self.dir / "crmsync.toml", crm=crm,
            profile={"settings": settings, "fields": fields, "lists": lists},
            esp={"connector": "memory-esp", "mode": "api",
                 "settings": {"path": str(self.esp_path)}},
            state=f"sqlite:///{self.dir / 'state.db'}"))
        self.esp = store(path=self.esp_path)

    def sync(self, **run: Any) -> Any:
        stats = sync_once(self.config, **run)
        assert stats.status == "succeeded", (stats.status, stats.stopped_reason)
        return stats

    def esp_lists(self, email: str) -> dict[str, Any]:
        self.esp._load()
        record_id = self.esp.by_email(email)
        return {} if record_id is None else self.esp.records[record_id]["lists"]

    def esp_status(self, email: str, list_id: str = "1") -> str | None:
        entry = self.esp_lists(email).get(list_id)
        return entry["status"] if entry else None

    def esp_fields(self, email: str) -> dict[str, Any]:
        self.esp._load()
        record_id = self.esp.by_email(email)
        return {} if record_id is None else self.esp.records[record_id]["fields"]

    def esp_unsubscribe(self, email: str, list_id: str = "1") -> None:
        with open_side(self.config, "esp") as esp:
            esp.unsubscribe(email, list_id)


def next_second() -> None:
    """Both CRMs stamp whole seconds: let one pass so a change sorts after the cursor."""
    time.sleep(1.1)


def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout}s (last: {value!r})")
        time.sleep(0.2)
    return value


def live_env(crm: str, *names: str) -> dict[str, str]:
    """The ``CRMSYNC_LIVE_<CRM>_*`` settings, or skip when the URL is not set."""
    prefix = f"CRMSYNC_LIVE_{crm.upper()}_"
    values = {name: os.environ.get(prefix + name.upper(), "") for name in ("url", *names)}
    if not values["url"]:
        pytest.skip(f"set {prefix}URL to run the live {crm} tests against a real server")
    return values
