"""Sending to an address that withdrew its consent (issue 12 point 5): refused by default,
allowed only as a transactional message, which the journal records; a list that is
not configured is a 400; a 5,000-digit message id is a 400, not a 500 (point 9)."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from crmsync.cli import cli

from .conftest import esp_unsubscribe, eventually

ENV = {"CRMSYNC_CONNECTORS": "memory,memory-esp"}
TOKEN = {"Authorization": "Bearer tok-789"}


def unsubscribed_everywhere(rt: Any, email: str = "ann@example.com") -> None:
    for list_id in ("1", "2"):
        assert rt.post_esp(esp_unsubscribe(email, list_id)).status_code == 200
    eventually(lambda: {e["list_id"] for e in rt.journal(email)
                        if e["new_status"] == "unsubscribed"} >= {"1", "2"})


def test_post_send_refuses_an_address_unsubscribed_from_every_list(serve_pair: Any) -> None:
    rt = serve_pair(env={"CRMSYNC_SEND_TOKEN": "tok-789"})
    assert rt.post_esp(esp_unsubscribe("ann@example.com", "1")).status_code == 200
    eventually(lambda: rt.idle() and any(e["new_status"] == "unsubscribed"
                                         for e in rt.journal("ann@example.com")))
    # still subscribed to list 2: a send is hers to receive
    assert rt.http.post("/send", json={"message": "7", "to": "ann@example.com"},
                        headers=TOKEN).status_code == 200
    unsubscribed_everywhere(rt)
    before = len(rt.journal("ann@example.com"))
    refused = rt.http.post("/send", json={"message": "8", "to": "ann@example.com"},
                           headers=TOKEN)
    assert refused.status_code == 403
    assert "unsubscribed from every list" in refused.json()["error"]
    assert [s["message"] for s in rt.esp.sent] == ["7"]
    allowed = rt.http.post("/send", json={"message": "9", "to": "ann@example.com",
                                          "transactional": True}, headers=TOKEN)
    assert allowed.status_code == 200, allowed.text
    assert [s["message"] for s in rt.esp.sent] == ["7", "9"]
    entries = rt.journal("ann@example.com")[before:]
    assert {(e["list_id"], e["old_status"], e["new_status"], e["source"]) for e in entries} == {
        ("1", "unsubscribed", "unsubscribed", "POST /send"),
        ("2", "unsubscribed", "unsubscribed", "POST /send")}
    assert all("transactional message 9" in e["reason"] for e in entries)


def test_the_send_command_refuses_too_unless_transactional(serve_pair: Any) -> None:
    rt = serve_pair()
    unsubscribed_everywhere(rt)
    config = str(rt.tmp / "crmsync.toml")
    refused = CliRunner().invoke(cli, ["--config", config, "send", "-m", "5", "--to",
                                       "ann@example.com"], env=ENV)
    assert refused.exit_code == 2, refused.output
    assert refused.output.startswith("crmsync: error: ann@example.com is unsubscribed from "
                                     "every list")
    assert "--transactional" in refused.output
    assert rt.esp.sent == []
    allowed = CliRunner().invoke(cli, ["--config", config, "--json", "send", "-m", "5",
                                       "--to", "ann@example.com", "--transactional"], env=ENV)
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.output)["recipients"] == 1
    assert [e["source"] for e in rt.journal("ann@example.com")][-2:] == ["command", "command"]


def test_post_send_to_a_list_that_is_not_configured_is_400(serve_pair: Any) -> None:
    rt = serve_pair(env={"CRMSYNC_SEND_TOKEN": "tok-789"})
    answer = rt.http.post("/send", json={"message": "7", "list": "99"}, headers=TOKEN)
    assert answer.status_code == 400
    assert "list 99 is not configured" in answer.json()["error"]
    assert rt.esp.sent == []


def test_post_send_with_a_huge_or_odd_message_id_is_400(serve_pair: Any) -> None:
    rt = serve_pair(env={"CRMSYNC_SEND_TOKEN": "tok-789"})
    for body in (b'{"message": ' + b"9" * 5000 + b', "to": "ann@example.com"}',
                 json.dumps({"message": "9" * 5000, "to": "ann@example.com"}).encode(),
                 json.dumps({"message": {"x": 1}, "to": "ann@example.com"}).encode(),
                 json.dumps({"message": "1", "to": ["ann@example.com"]}).encode(),
                 json.dumps({"message": "1", "to": "ann@example.com",
                             "transactional": "yes"}).encode(),
                 b"[" * 10_000):
        answer = rt.http.post("/send", content=body, headers=TOKEN)
        assert answer.status_code == 400, (body[:40], answer.text)
    assert rt.esp.sent == []
