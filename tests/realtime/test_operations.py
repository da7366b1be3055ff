"""The operator's side in real time (issue 17 points 4, 6, 8): an erased person's CRM
notifications are not sent to the ESP until the ESP's webhook says she subscribed
again; the worker's journal entries are sealed when it stops; /metrics has the same
dead-letter gauge as a batch run's metrics file."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from crmsync.cli import cli
from crmsync.model import Change, Status, Subscription
from crmsync.runtime import open_side
from crmsync.state import StateStore

from .conftest import FIELDS, crm_event, eventually

ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp", "CRMSYNC_PLUGINS": ""}
ANN = "ann@example.com"


def esp_subscribe(email: str) -> dict[str, Any]:
    return {"changes": [{"email": email, "source": "memory-esp", "subscriptions": {
        "1": {"list_id": "1", "status": "subscribed", "reason": "confirmed"}}}]}


def esp_fields(rt: Any, email: str) -> dict[str, Any]:
    with rt.esp.lock:
        rt.esp._load()
        record_id = rt.esp.by_email(email)
        return dict(rt.esp.records[record_id]["fields"]) if record_id else {}


def test_an_erased_person_is_held_back_until_she_opts_in_at_the_esp(serve_pair) -> None:
    rt = serve_pair()
    assert rt.esp_list(ANN) == "subscribed"
    config = str(rt.tmp / "crmsync.toml")
    forgot = CliRunner().invoke(cli, ["--config", config, "forget", ANN, "--yes"], env=ENV)
    assert forgot.exit_code == 0, forgot.output
    assert rt.esp_list(ANN) is None

    # the CRM still has her and notifies a change: applied, but nothing reaches the ESP
    assert rt.post_crm(crm_event(ANN, fields=dict(FIELDS, FirstName="Anne"))
                       ).status_code == 200
    eventually(rt.idle)
    assert rt.state.inbox_counts().get("done", 0) >= 1
    assert rt.esp_list(ANN) is None and esp_fields(rt, ANN) == {}

    # she subscribes through the ESP's own (confirmed) form, and its webhook says so:
    # the suppression is lifted, and her CRM data reaches the ESP again
    with open_side(rt.config, "esp") as esp:
        [done] = esp.write([Change(email=ANN, source="memory-esp", subscriptions={
            "1": Subscription(list_id="1", status=Status.SUBSCRIBED)})])
    assert done.ok
    assert rt.post_esp(esp_subscribe(ANN)).status_code == 200
    eventually(rt.idle)
    assert rt.post_crm(crm_event(ANN, fields=dict(FIELDS, FirstName="Anna"))
                       ).status_code == 200
    eventually(lambda: esp_fields(rt, ANN).get("name") == "Anna")
    assert rt.esp_list(ANN) == "subscribed"
    assert "crmsync_dead_letters 0.0" in rt.http.get("/metrics").text


def test_the_workers_entries_are_sealed_when_it_stops(serve_pair) -> None:
    rt = serve_pair()
    assert rt.post_crm(crm_event("new@example.com", fields=dict(FIELDS))).status_code == 200
    eventually(lambda: rt.esp_list("new@example.com") == "subscribed")
    rt.service.worker.stop()
    state = StateStore(rt.config.state_url())
    try:
        with state.engine.connect() as conn:
            entries = conn.exec_driver_sql("SELECT count(*) FROM crmsync_journal").scalar()
            seals = conn.exec_driver_sql("SELECT count(*) FROM crmsync_journal_seals").scalar()
    finally:
        state.close()
    assert entries and seals == entries
