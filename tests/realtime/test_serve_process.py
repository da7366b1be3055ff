"""`crmsync serve` as a real process: SIGKILL with events queued, SIGTERM, restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from crmsync.cli import cli
from crmsync.config import load_config
from crmsync.emulator import free_port, serving
from crmsync.state import StateStore
from crmsync.testing.memory import MemoryStore

from .conftest import ESP_SECRET, FIELDS, esp_unsubscribe, eventually, write_config

CRMSYNC = Path(sys.executable).parent / "crmsync"
CONTACTS = 30


class Process:
    """One `crmsync serve` process on a free port."""

    def __init__(self, tmp: Path, config: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, CRMSYNC_HOOK_SECRET_ESP=ESP_SECRET, CRMSYNC_PLUGINS="",
                   CRMSYNC_CONNECTORS="memory,memory-esp")
        self.log = (tmp / f"serve-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(CRMSYNC), "--config", str(config), "serve", "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp)
        eventually(self._up, timeout=30, interval=0.05)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}: "
                                 + (self.tmp / f"serve-{self.port}.log").read_text())
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def queue(self) -> int:
        return int(httpx.get(self.url + "/readyz", timeout=5).json()["queue"])

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.log.close()


@pytest.fixture
def slow_hook() -> Iterator[dict[str, int]]:
    """A customer URL that takes 20 ms: a post-operation call to it makes every applied
    unsubscribe slow enough for events to queue up."""
    calls = {"count": 0}

    async def slow(request: Request) -> Response:
        calls["count"] += 1
        await asyncio.sleep(0.02)
        return Response("ok")

    with serving(Starlette(routes=[Route("/slow", slow, methods=["POST"])])) as server:
        calls["port"] = server.port
        yield calls


@pytest.fixture
def prepared(tmp_path: Path, slow_hook: dict[str, int]) -> Path:
    config = write_config(tmp_path, server="batch_size = 1", extra=f"""
[[post_operations]]
on = "unsubscribe"
call_url = "http://127.0.0.1:{slow_hook['port']}/slow"
""")
    crm = MemoryStore(tmp_path / "crm.json")
    for n in range(CONTACTS):
        crm.add(f"p{n}@example.com", fields=dict(FIELDS, FirstName=f"P{n}"))
    result = CliRunner().invoke(cli, ["--config", str(config), "sync"],
                                env={"CRMSYNC_CONNECTORS": "memory,memory-esp"})
    assert result.exit_code == 0, result.output  # the ESP and the id map know everyone
    return config


def _send(url: str, n: int) -> bool:
    try:
        response = httpx.post(f"{url}/hooks/esp/{ESP_SECRET}", timeout=5,
                              json=esp_unsubscribe(f"p{n}@example.com", event_id=f"k-{n}"))
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _applied_once(tmp: Path, config: Path, emails: set[str]) -> None:
    crm = MemoryStore(tmp / "crm.json")
    opted_out = {r["email"] for r in crm.records.values() if r["fields"]["OptOut"] == "true"}
    assert emails <= opted_out
    state = StateStore(load_config(config).state_url())
    try:
        written: dict[str, int] = {}
        for entry in state.journal(limit=100_000):
            if entry["applied_to"] == "crm" and entry["new_status"] == "unsubscribed":
                written[entry["email"]] = written.get(entry["email"], 0) + 1
        assert {email: written.get(email) for email in emails} == {e: 1 for e in emails}
        assert state.inbox_pending_count() == 0 and state.dead_letters() == []
    finally:
        state.close()


def _pending(config: Path) -> int:
    state = StateStore(load_config(config).state_url())
    try:
        return state.inbox_pending_count()
    finally:
        state.close()


def test_sigkill_with_events_queued_loses_no_acknowledged_event(tmp_path, prepared) -> None:
    server = Process(tmp_path, prepared)
    acked: set[int] = set()
    enough = threading.Event()

    def one(n: int) -> None:
        if _send(server.url, n):
            acked.add(n)
            if len(acked) >= 15:
                enough.set()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, n) for n in range(CONTACTS)]
        assert enough.wait(30)
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        for future in futures:
            future.result()
    assert _pending(prepared) > 0, "the test needs events still queued at the kill"
    restarted = Process(tmp_path, prepared)
    try:
        # senders redeliver what was not acknowledged; some acknowledged ones come again
        for n in [*sorted(set(range(CONTACTS)) - acked), *sorted(acked)[:5]]:
            assert _send(restarted.url, n)
        eventually(lambda: restarted.queue() == 0, timeout=30, interval=0.05)
    finally:
        assert restarted.stop(signal.SIGTERM) == 0
    _applied_once(tmp_path, prepared, {f"p{n}@example.com" for n in range(CONTACTS)})


def test_sigterm_finishes_in_flight_and_keeps_the_rest(tmp_path, prepared) -> None:
    server = Process(tmp_path, prepared)
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda n: _send(server.url, n), range(12)))
    assert server.stop(signal.SIGTERM) == 0
    left = _pending(prepared)
    assert left > 0, "the test needs events still queued at the stop"
    restarted = Process(tmp_path, prepared)
    try:
        eventually(lambda: restarted.queue() == 0, timeout=30, interval=0.05)
    finally:
        assert restarted.stop(signal.SIGTERM) == 0
    _applied_once(tmp_path, prepared, {f"p{n}@example.com" for n in range(12)})
