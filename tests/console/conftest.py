"""A served crmsync (``serve``'s app, with the console) on the in-memory connectors, and
an operator that logs in over real HTTP."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from crmsync.config import load_config
from crmsync.model import Change, WriteResult
from crmsync.runtime import build_hooks, open_side, open_store
from crmsync.server import RealtimeService, ServerThread
from crmsync.server.console import hash_password
from crmsync.testing.memory import MemoryEspConnector, MemoryEspSettings, store
from tests.realtime.conftest import (
    CRM_SECRET,
    ESP_SECRET,
    FIELDS,
    Running,
    crm_event,
    db_url,
    eventually,
    write_config,
)

PASSWORD = "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD)
SESSION = "crmsync_console"

__all__ = ["CRM_SECRET", "ESP_SECRET", "PASSWORD", "ConsoleRunning", "FlakyEsp", "Operator",
           "crm_event", "db_url", "eventually"]


class FlakyEsp(MemoryEspConnector):
    """The in-memory ESP whose writes for the addresses in ``down_for`` fail (503)."""

    def __init__(self, settings: MemoryEspSettings) -> None:
        super().__init__(settings)
        self.down_for: set[str] = set()
        self.guard = threading.Lock()

    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        down = [c.email in self.down_for for c in changes]
        ok = iter(super().write([c for c, d in zip(changes, down) if not d]))
        return [WriteResult(ok=False, error="service unavailable", code="503", retryable=True)
                if d else next(ok) for d in down]


class Operator:
    """An operator's browser, as far as HTTP goes: the session cookie is sent by hand
    (it is ``Secure``; httpx, unlike Chromium, keeps no Secure cookie over plain
    http even on 127.0.0.1)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=15, follow_redirects=False)
        self.session = ""

    def login_form(self) -> tuple[str, str]:
        """The login page's CSRF token and its cookie."""
        page = self.http.get("/admin/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token, page.text
        return token.group(1), page.cookies.get("crmsync_console_login", "") or _cookie(
            page, "crmsync_console_login")

    def login(self, password: str = PASSWORD, *, next_path: str = "") -> httpx.Response:
        token, cookie = self.login_form()
        answer = self.http.post("/admin/login", data={"csrf": token, "password": password,
                                                      "next": next_path},
                                headers={"Cookie": f"crmsync_console_login={cookie}"})
        if answer.status_code == 303:
            self.session = _cookie(answer, SESSION)
        return answer

    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION}={self.session}"} if self.session else {}

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, headers=self.headers(), **kwargs)

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.get("/admin/runs").text)
        assert found
        return found.group(1)

    def post(self, path: str, data: Any, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, data=data, headers=self.headers(), **kwargs)


def _cookie(response: httpx.Response, name: str) -> str:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            return header.split(";", 1)[0].split("=", 1)[1].strip('"')
    return ""


class ConsoleRunning(Running):
    def operator(self) -> Operator:
        return Operator(self.url)

    def dead_letter(self, email: str = "bob@example.com") -> dict[str, Any]:
        """A CRM event for ``email`` that dies (the ESP refuses it every time)."""
        esp = self.service.esp
        assert isinstance(esp, FlakyEsp)
        esp.down_for.add(email)
        before = len(self.state.dead_letters())
        event = crm_event(email, ids={"memory": self.crm.by_email(email)},
                          fields=dict(FIELDS, OptOut="true"))
        assert self.post_crm(event).status_code == 200
        eventually(lambda: len(self.state.dead_letters()) == before + 1)
        return self.state.dead_letters()[-1]


@pytest.fixture
def console_pair(tmp_path: Path) -> Iterator[Callable[..., ConsoleRunning]]:
    """``console_pair(env=..., server=..., extra=...)``: ``crmsync serve``'s app with the
    console (the operator password set unless ``console=False``)."""
    started: list[tuple[ConsoleRunning, Any]] = []

    def start(*, console: bool = True, env: dict[str, str] | None = None, server: str = "",
              extra: str = "", crm_fields: dict[str, dict[str, str]] | None = None,
              esp_link: str | None = None, state: str = "sqlite:///state.db"
              ) -> ConsoleRunning:
        path = write_config(tmp_path, server=server or "max_attempts = 2", extra=extra,
                            state=state)
        config = load_config(path)
        crm_store = store(path=tmp_path / "crm.json")
        if not crm_store.records:
            crm_store.add("ann@example.com", fields=dict(FIELDS, Interests="news"),
                          memberships={"campaign:7": "Responded"})
            crm_store.add("bob@example.com", fields=dict(FIELDS, FirstName="Bob",
                                                         LastName="B"))
            for email, fields in (crm_fields or {}).items():
                crm_store.add(email, fields=dict(FIELDS, **fields))
        environ = {"CRMSYNC_HOOK_SECRET_ESP": ESP_SECRET, "CRMSYNC_HOOK_SECRET_CRM": CRM_SECRET}
        if console:
            environ["CRMSYNC_CONSOLE_PASSWORD_HASH"] = PASSWORD_HASH
        environ.update(env or {})
        state = open_store(config)
        esp = FlakyEsp(MemoryEspSettings(path=tmp_path / "esp.json",
                                         console_recipient_url=esp_link))
        service = RealtimeService(config, open_side(config, "crm"), esp, state,
                                  hooks=build_hooks(config), environ=environ,
                                  config_path=path)
        service.worker.poll_once()  # the first full read: the ESP and the id map
        server = ServerThread(service).start()
        running = ConsoleRunning(tmp_path, config, service, server)
        started.append((running, state))
        return running

    yield start
    for running, state in started:
        running.http.close()
        running.server.stop()
        running.service.close()
        state.close()
        time.sleep(0)
