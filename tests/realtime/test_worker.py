"""The worker: outages, per-contact order, retries with backoff, dead letters, replay."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx
from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.engine.realtime import backoff_delay
from crmsync.errors import RateLimited, RemoteError
from crmsync.model import Change, WriteResult
from crmsync.testing.memory import (
    MemoryConnector,
    MemoryEspConnector,
    MemoryEspSettings,
    MemorySettings,
)

from .conftest import FIELDS, crm_event, esp_unsubscribe, eventually


class FlakyEsp(MemoryEspConnector):
    """The in-memory ESP with an outage switch: whole calls fail (503, 429, a timeout)
    while ``outage`` holds faults, or one address's writes fail while ``down_for``
    holds it."""

    def __init__(self, settings: MemoryEspSettings) -> None:
        super().__init__(settings)
        self.outage: list[Exception] = []
        self.down_for: set[str] = set()
        self.calls: list[tuple[float, list[Change]]] = []
        self.guard = threading.Lock()

    def write(self, changes: Sequence[Change]) -> list[WriteResult]:
        with self.guard:
            self.calls.append((time.monotonic(), list(changes)))
            if self.outage:
                raise self.outage.pop(0)
        down = [c.email in self.down_for for c in changes]
        ok = iter(super().write([c for c, d in zip(changes, down) if not d]))
        return [WriteResult(ok=False, error="service unavailable", code="503", retryable=True)
                if d else next(ok) for d in down]


def flaky(tmp_path) -> FlakyEsp:
    return FlakyEsp(MemoryEspSettings(path=tmp_path / "esp.json"))


def bob_change(rt, **fields: str) -> dict:
    return crm_event("bob@example.com", ids={"memory": rt.crm.by_email("bob@example.com")},
                     fields=dict(FIELDS, FirstName="Bob", **fields))


def test_backoff_doubles_up_to_the_cap_and_honours_retry_after() -> None:
    delays = [backoff_delay(n, base=1.0, cap=10.0) for n in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay(1, base=1.0, cap=10.0, retry_after=30.0) == 30.0
    assert backoff_delay(3, base=1.0, cap=10.0, retry_after=0.5) == 4.0


def test_esp_outage_events_wait_and_none_is_lost(serve_pair, tmp_path) -> None:
    esp = flaky(tmp_path)
    rt = serve_pair(esp=esp, server="max_attempts = 10")
    esp.outage = [RemoteError("503 Service Unavailable", status=503, retryable=True),
                  httpx.ReadTimeout("timed out"),
                  RemoteError("502 Bad Gateway", status=502, retryable=True),
                  RateLimited("slow down", retry_after=0.4)]
    before = len(esp.calls)
    rt.post_crm(bob_change(rt, OptOut="true") | {"changes": [
        dict(bob_change(rt, OptOut="true")["changes"][0], event_id="o-1")]})
    for n, email in enumerate(["cyd@example.com", "dee@example.com"]):
        assert rt.post_crm(crm_event(email, fields=dict(FIELDS), event_id=f"o-{n + 2}")
                           ).status_code == 200
    eventually(lambda: rt.esp_list("bob@example.com") == "unsubscribed")
    eventually(lambda: rt.esp_list("cyd@example.com") == "subscribed"
               and rt.esp_list("dee@example.com") == "subscribed")
    eventually(rt.idle)
    assert rt.state.inbox_counts() == {"done": 3} and rt.state.dead_letters() == []
    calls = [at for at, _ in esp.calls[before:]]
    assert len(calls) >= 5  # four refused calls, then the ones that went through
    assert calls[4] - calls[3] >= 0.4  # the vendor's Retry-After was honoured
    eventually(lambda: 'crmsync_events_applied_total{endpoint="crm"} 3.0'
               in rt.http.get("/metrics").text)
    assert 'crmsync_events_failed_total{endpoint="crm"}' in rt.http.get("/metrics").text


def test_a_contact_waiting_for_a_retry_blocks_only_its_own_later_events(serve_pair,
                                                                        tmp_path) -> None:
    esp = flaky(tmp_path)
    rt = serve_pair(esp=esp, server="retry_base_s = 0.3\nretry_max_s = 0.3")
    esp.down_for = {"bob@example.com"}
    first = bob_change(rt, LastName="One")
    first["changes"][0]["event_id"] = "b-1"
    rt.post_crm(first)
    eventually(lambda: any(c.email == "bob@example.com" for _, cs in esp.calls for c in cs))
    second = bob_change(rt, LastName="Two")
    second["changes"][0]["event_id"] = "b-2"
    rt.post_crm(second)
    rt.post_crm(crm_event("cyd@example.com", fields=dict(FIELDS), event_id="c-1"))
    eventually(lambda: rt.esp_list("cyd@example.com") == "subscribed")
    pending = eventually(lambda: (events := rt.state.inbox_events(status="pending"))
                         and len(events) == 2 and events)
    assert [e["dedupe_key"] for e in pending] == ["id:b-1", "id:b-2"]
    assert pending[1]["attempts"] == 0  # never tried while b-1 waits
    esp.down_for = set()
    eventually(rt.idle)
    surnames = [c.fields.get("surname") for _, cs in esp.calls for c in cs
                if c.email == "bob@example.com" and c.fields.get("surname")]
    assert surnames[-2:] == ["One", "Two"]
    with rt.esp.lock:
        assert rt.esp.records[rt.esp.by_email("bob@example.com")]["fields"]["surname"] == "Two"


def test_retry_cap_then_dead_letter_then_replay(serve_pair, tmp_path) -> None:
    esp = flaky(tmp_path)
    rt = serve_pair(esp=esp, server="max_attempts = 3")
    esp.down_for = {"bob@example.com"}
    event = bob_change(rt, OptOut="true")
    event["changes"][0]["event_id"] = "dead-1"
    rt.post_crm(event)
    eventually(lambda: len(rt.state.dead_letters()) == 1)
    dead = rt.state.dead_letters()[0]
    assert dead["attempts"] == 3 and "gave up after 3 attempts" in dead["error"]
    assert rt.esp_list("bob@example.com") == "subscribed"
    config = str(rt.tmp / "crmsync.toml")
    status = CliRunner().invoke(cli, ["--config", config, "--json", "status"])
    assert status.exit_code == 0 and json.loads(status.output)["dead_letters"] == 1
    eventually(lambda: 'crmsync_events_dead_total{endpoint="crm"} 1.0'
               in rt.http.get("/metrics").text)
    # the outage is over: the running server applies what `replay --queue-only` put back
    esp.down_for = set()
    # no --queue-only: the running server is noticed, and left to apply them
    result = CliRunner().invoke(cli, ["--config", config, "--json", "replay", "--dead-letters"])
    assert result.exit_code == 0, result.output
    output = json.loads(result.output)
    assert output["requeued"] == 1 and output["left_to"].startswith("crmsync serve")
    eventually(lambda: rt.esp_list("bob@example.com") == "unsubscribed")
    assert rt.state.dead_letters() == []


def test_replay_applies_dead_letters_itself_when_no_server_runs(serve_pair, tmp_path) -> None:
    crm = MemoryConnector(MemorySettings(path=tmp_path / "crm.json",
                                         fail_emails=["ann@example.com"]))
    rt = serve_pair(crm=crm)
    rt.post_esp(esp_unsubscribe("ann@example.com", event_id="refused"))
    # refused for good by the CRM: dead at once, not retried
    eventually(lambda: len(rt.state.dead_letters()) == 1)
    dead = rt.state.dead_letters()[0]
    assert dead["attempts"] == 1 and "not retryable" in dead["error"]
    assert "rejected by test configuration" in dead["error"]
    rt.server.stop()
    result = CliRunner().invoke(cli, ["--config", str(rt.tmp / "crmsync.toml"), "--json",
                                      "replay", "--dead-letters"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["applied"] == 1
    assert rt.crm_record("ann@example.com")["fields"]["OptOut"] == "true"
    written = [e for e in rt.journal("ann@example.com") if e["applied_to"] == "crm"]
    assert len(written) == 1 and written[0]["reason"] == "written again after an earlier failure"


def test_an_unreadable_stored_event_is_set_aside_and_the_rest_go_on(serve_pair) -> None:
    rt = serve_pair(worker=False)
    from crmsync.state import schema

    now = datetime.now(UTC)
    with rt.state.begin() as conn:  # as an older or newer crmsync might have stored it
        conn.execute(schema.inbox.insert().values(
            endpoint="esp", dedupe_key="broken", contact="ann@example.com",
            payload=[{"email": "not an address"}], received_at=now, status="pending",
            attempts=0, next_attempt_at=now))
    rt.post_esp(esp_unsubscribe("ann@example.com", event_id="after-broken"))
    rt.service.worker.drain(timeout=10)
    [dead] = rt.state.dead_letters()
    assert "unreadable stored event" in dead["error"]
    assert rt.crm_record("ann@example.com")["fields"]["OptOut"] == "true"


def test_a_batch_run_holding_the_store_pauses_the_worker_without_killing_it(serve_pair
                                                                            ) -> None:
    """While a batch run holds the state store the worker waits (no Retry-After pause is
    pending then): it used to die in its idle wait, leaving every later event unapplied."""
    rt = serve_pair()
    store = rt.service.worker.store
    with store.exclusive("batch"):
        rt.post_esp(esp_unsubscribe("ann@example.com", event_id="held-1"))
        time.sleep(1.5)  # several idle waits while held
        assert rt.service.worker.running
        assert rt.crm_record("ann@example.com")["fields"]["OptOut"] != "true"
    eventually(lambda: rt.crm_record("ann@example.com")["fields"]["OptOut"] == "true")
    assert rt.service.worker.running


def test_a_retried_event_s_log_lines_carry_its_inbox_id_in_json(serve_pair, tmp_path) -> None:
    """Issue 17 point 3: with JSON logs, the worker's lines about an event carry its
    inbox id as ``event_id`` (they carried only the run's id)."""
    import io

    from crmsync.logs import configure_logging

    esp = flaky(tmp_path)
    rt = serve_pair(esp=esp, server="max_attempts = 10")
    out = io.StringIO()
    configure_logging(logging.INFO, "json", stream=out)
    try:
        esp.outage = [RemoteError("503 Service Unavailable", status=503, retryable=True)]
        rt.post_crm(crm_event("cyd@example.com", fields=dict(FIELDS), event_id="o-9"))
        eventually(lambda: rt.esp_list("cyd@example.com") == "subscribed")
    finally:
        configure_logging(logging.WARNING, "text")
    [event] = rt.state.inbox_events()
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    retried = [r for r in lines if "will be retried" in r["message"]]
    assert retried and {r["event_id"] for r in retried} == {str(event["id"])}, lines
