"""Subscribing and sending from an application (library, CLI, POST /send), and the
health, readiness and metrics endpoints."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from crmsync.actions import send, subscribe
from crmsync.cli import cli
from crmsync.config import load_config
from crmsync.errors import ConfigError, DataError
from crmsync.runtime import open_side, open_store
from crmsync.testing.memory import MemoryStore, store

from .conftest import FIELDS, esp_unsubscribe, eventually, write_config

ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp"}


def test_subscribe_command_to_several_lists_at_once(tmp_path) -> None:
    config = write_config(tmp_path)
    result = CliRunner().invoke(cli, ["--config", str(config), "--json", "subscribe",
                                      "Eve@Example.com", "--list", "1", "--list", "2",
                                      "--group", "news", "--no-confirm"], env=ENV)
    assert result.exit_code == 0, result.output
    assert [row["ok"] for row in json.loads(result.output)["results"]] == [True, True]
    esp = MemoryStore(tmp_path / "esp.json")
    [record] = esp.records.values()
    assert record["email"] == "eve@example.com"
    assert {k: (v["status"], v["groups"]) for k, v in record["lists"].items()} == {
        "1": ("subscribed", ["news"]), "2": ("subscribed", ["news"])}
    refused = CliRunner().invoke(cli, ["--config", str(config), "subscribe", "eve@example.com",
                                       "--list", "9"], env=ENV)
    assert refused.exit_code == 2 and "not configured" in refused.output


def test_subscribe_library_call_validates_and_confirms_by_default(tmp_path) -> None:
    config = load_config(write_config(tmp_path))
    with open_side(config, "esp") as esp:
        assert [r.ok for r in subscribe(esp, "fay@example.com", ["1"], config=config)] == [True]
        with pytest.raises(DataError, match="not an email address"):
            subscribe(esp, "fay@", ["1"])
        with pytest.raises(ConfigError, match="which list"):
            subscribe(esp, "fay@example.com", [])
        with pytest.raises(ConfigError, match="exactly one of"):
            send(esp, "5")
        with pytest.raises(ConfigError, match="needs --list"):
            send(esp, "5", to="fay@example.com", group_id="g")
    esp_store = MemoryStore(tmp_path / "esp.json")
    [record] = esp_store.records.values()
    assert record["lists"]["1"]["status"] == "pending"


def test_send_command_to_one_address_and_to_a_list(tmp_path) -> None:
    config = write_config(tmp_path)
    esp = MemoryStore(tmp_path / "esp.json")
    esp.add("a@example.com", lists={"1": "subscribed"})
    esp.add("b@example.com", lists={"1": "unsubscribed"})
    one = CliRunner().invoke(cli, ["--config", str(config), "--json", "send", "--message", "42",
                                   "--to", "C@example.com"], env=ENV)
    assert one.exit_code == 0, one.output
    assert json.loads(one.output)["recipients"] == 1
    many = CliRunner().invoke(cli, ["--config", str(config), "send", "-m", "43", "--list", "1"],
                              env=ENV)
    assert many.exit_code == 0 and "1 recipient" in many.output
    sent = MemoryStore(tmp_path / "esp.json").sent
    assert sent == [{"message": "42", "to": ["c@example.com"]},
                    {"message": "43", "to": ["a@example.com"]}]
    both = CliRunner().invoke(cli, ["--config", str(config), "send", "-m", "1", "--to",
                                    "c@example.com", "--list", "1"], env=ENV)
    assert both.exit_code == 2 and "exactly one of" in both.output


def test_post_send_needs_the_bearer_token(serve_pair) -> None:
    rt = serve_pair(env={"CRMSYNC_SEND_TOKEN": "tok-789"})
    body = {"message": "77", "to": "ann@example.com"}
    assert rt.http.post("/send", json=body).status_code == 401
    assert rt.http.post("/send", json=body, headers={"Authorization": "Bearer nope"}
                        ).status_code == 401
    assert rt.esp.sent == []
    ok = rt.http.post("/send", json=body, headers={"Authorization": "Bearer tok-789"})
    assert ok.status_code == 200 and ok.json()["recipients"] == 1
    bad = rt.http.post("/send", json={"to": "x@example.com"},
                       headers={"Authorization": "Bearer tok-789"})
    assert bad.status_code == 400
    listed = rt.http.post("/send", json={"message": "78", "list": "1"},
                          headers={"Authorization": "Bearer tok-789"})
    assert listed.json()["recipients"] == 2
    assert [s["message"] for s in rt.esp.sent] == ["77", "78"]


def test_post_send_is_off_without_a_token(serve_pair) -> None:
    rt = serve_pair()
    response = rt.http.post("/send", json={"message": "1", "to": "ann@example.com"})
    assert response.status_code == 404 and "CRMSYNC_SEND_TOKEN" in response.text


def test_health_readiness_and_metrics(serve_pair) -> None:
    rt = serve_pair()
    assert rt.http.get("/healthz").text == "ok\n"
    ready = rt.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    rt.post_esp(esp_unsubscribe("ann@example.com", event_id="m-1"))
    eventually(lambda: 'crmsync_events_applied_total{endpoint="esp"} 1.0'
               in rt.http.get("/metrics").text)
    metrics = rt.http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'crmsync_events_received_total{endpoint="esp"} 1.0' in text
    assert 'crmsync_events_applied_total{endpoint="esp"} 1.0' in text
    assert 'crmsync_event_apply_latency_seconds_count{endpoint="esp"} 1.0' in text
    assert "crmsync_inbox_queue_depth 0.0" in text
    rt.service.stop()  # what a SIGTERM does first
    assert rt.http.get("/readyz").status_code == 503
    refused = rt.post_esp(esp_unsubscribe("bob@example.com", event_id="late"))
    assert refused.status_code == 503 and refused.headers["retry-after"]


def test_queue_depth_counts_what_waits(serve_pair) -> None:
    rt = serve_pair(worker=False)
    for n in range(3):
        rt.post_esp(esp_unsubscribe("ann@example.com", event_id=f"q-{n}"))
    assert "crmsync_inbox_queue_depth 3.0" in rt.http.get("/metrics").text
    # a receive-only process (another one applies) is ready to receive
    assert httpx.get(rt.url + "/readyz").status_code == 200


def _token(html: str) -> str:
    import re

    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_form_posts_are_limited_per_address_and_checked_without_a_browser(serve_pair) -> None:
    rt = serve_pair(server="form_rate_per_minute = 2")
    page = rt.http.get("/subscribe")
    assert page.status_code == 200 and "Newsletter" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    token = _token(page.text)
    # a cross-site POST: the right field, but not the cookie
    forged = httpx.post(rt.url + "/subscribe",
                        data={"email": "x@example.com", "list": "1", "csrf_token": token})
    assert forged.status_code == 403
    unknown = rt.http.post("/subscribe", data={"email": "x@example.com", "list": "9",
                                               "csrf_token": token})
    assert unknown.status_code == 400 and "choose among the lists shown" in unknown.text
    third = rt.http.post("/subscribe", data={"email": "x@example.com", "list": "1",
                                             "csrf_token": _token(unknown.text)})
    assert third.status_code == 429 and "Too many attempts" in third.text
    assert rt.esp_list("x@example.com") is None


def test_serve_and_replay_refuse_an_incomplete_configuration(tmp_path) -> None:
    config = tmp_path / "crmsync.toml"
    config.write_text('[crm]\nconnector = "memory"\n[[lists]]\nname = "N"\nesp_list = 1\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "serve"], env=ENV)
    assert result.exit_code == 2 and "needs both [crm] and [esp]" in result.output
    # issue 12 point 15: --dead-letters is what replay replays, so it is not required
    nothing = CliRunner().invoke(cli, ["--config", str(config), "replay"], env=ENV)
    assert nothing.exit_code == 0 and "put 0 dead letter(s) back" in nothing.output


def test_subscribe_no_confirm_never_resubscribes_an_unsubscribed_address(tmp_path) -> None:
    """An address unsubscribed at the ESP is re-subscribed only through the ESP's
    confirmation email: --no-confirm is refused for that list (exit 1, nothing sent,
    nothing journaled), the other lists go through, and the journal tells the truth."""
    config = write_config(tmp_path)
    crm = store(path=tmp_path / "crm.json")
    crm.add("ann@example.com", fields=dict(FIELDS))
    run = CliRunner().invoke(cli, ["--config", str(config), "sync", "--full"], env=ENV)
    assert run.exit_code == 0, run.output
    with open_side(load_config(config), "esp") as esp_side:
        esp_side.unsubscribe("ann@example.com", "1")  # she clicks "unsubscribe"
    run = CliRunner().invoke(cli, ["--config", str(config), "sync"], env=ENV)
    assert run.exit_code == 0, run.output

    result = CliRunner().invoke(cli, ["--config", str(config), "subscribe", "ann@example.com",
                                      "--list", "1", "--list", "2", "--no-confirm"], env=ENV)
    assert result.exit_code == 1, result.output
    assert "list 1: failed: ann@example.com unsubscribed from list 1" in result.output
    assert "without --no-confirm" in result.output
    assert "list 2: subscribed" in result.output
    esp = MemoryStore(tmp_path / "esp.json")
    lists = esp.records[esp.by_email("ann@example.com")]["lists"]
    assert lists["1"]["status"] == "unsubscribed"
    assert lists["2"]["status"] == "subscribed"
    state = open_store(load_config(config))
    try:
        changes = [(e["list_id"], e["old_status"], e["new_status"], e["source"])
                   for e in state.journal(email="ann@example.com")]
    finally:
        state.close()
    assert not [c for c in changes if c[0] == "1" and c[3] == "command"]
    assert ("2", None, "subscribed", "command") in changes

    # through the confirmation flow it is allowed: pending, journaled from what it was
    result = CliRunner().invoke(cli, ["--config", str(config), "--json", "subscribe",
                                      "ann@example.com", "--list", "1"], env=ENV)
    assert result.exit_code == 0, result.output
    assert MemoryStore(tmp_path / "esp.json").records[esp.by_email("ann@example.com")][
        "lists"]["1"]["status"] == "pending"
    state = open_store(load_config(config))
    try:
        last = [(e["old_status"], e["new_status"]) for e in state.journal(
            email="ann@example.com") if e["list_id"] == "1" and e["source"] == "command"]
    finally:
        state.close()
    assert last == [("unsubscribed", "pending")]
