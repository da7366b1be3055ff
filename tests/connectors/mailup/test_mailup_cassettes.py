"""The connector against cassettes built from MailUp's documented examples (replay only:
no network; a request the cassette does not hold fails the test)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import vcr

from crmsync.errors import RateLimited
from crmsync.model import Change, Cursor, Status, Subscription
from crmsync.testing.plugin import vcr_config
from crmsync_mailup import Address, MailUpConnector, MailUpSettings, TransactionalMessage

CASSETTES = Path(__file__).resolve().parents[3] / "cassettes" / "mailup"
recorder = vcr.VCR(**{**vcr_config(), "cassette_library_dir": str(CASSETTES)})


@pytest.fixture
def connector(monkeypatch):
    monkeypatch.setenv("CRMSYNC_MAILUP_CLIENT_SECRET", "cs-123")
    monkeypatch.setenv("CRMSYNC_MAILUP_PASSWORD", "pw-456")
    monkeypatch.setenv("CRMSYNC_MAILUP_TRANSACTIONAL_SECRET", "tx-789")
    settings = MailUpSettings.load("mailup", {
        "client_id": "cid", "username": "m1234", "field_ids": {"name": 1},
        "transactional_username": "s12345_1", "lists": ["1"]})
    with httpx.Client() as http, MailUpConnector(settings, http=http) as connector:
        yield connector


def test_lists_and_groups(connector):
    with recorder.use_cassette("lists_and_groups.yaml") as cassette:
        [newsletter] = connector.lists()
    assert cassette.all_played
    assert newsletter.id == "1" and newsletter.name == "Newsletter"
    assert [(g.id, g.name) for g in newsletter.groups] == [("9", "Gruppo")]


def test_subscribe_answers_a_bare_integer(connector):
    change = Change(email="email+1@email.email", fields={"name": "ASDFGHJKL"},
                    subscriptions={"1": Subscription(list_id="1", status=Status.SUBSCRIBED)})
    with recorder.use_cassette("subscribe_bare_integer.yaml") as cassette:
        [result] = connector.write([change])
    assert cassette.all_played
    assert result.ok and result.record_id == "16"


def test_email_optins_become_changes(connector):
    since = Cursor(at=datetime(2020, 1, 1, tzinfo=UTC))
    with recorder.use_cassette("email_optins.yaml") as cassette:
        pages = list(connector.read(since))
    assert cassette.all_played
    records = {r.email: r.subscriptions["1"] for p in pages for r in p.records}
    assert records["email+1@email.email"].status is Status.SUBSCRIBED
    out = records["email+2@email.email"]
    assert out.status is Status.UNSUBSCRIBED and out.reason == "unsubscribe link (2/21)"
    assert out.groups == frozenset({"Gruppo"})
    # "2020-02-03 09:00:00" read in api_timezone, Europe/Rome by default (+01 in February)
    assert out.changed_at == datetime(2020, 2, 3, 8, tzinfo=UTC)
    assert pages[-1].cursor.at == datetime(2020, 2, 3, 8, tzinfo=UTC)


def test_expired_token_is_refreshed(connector):
    with recorder.use_cassette("expired_token_refresh.yaml") as cassette:
        assert connector.check().ok
    assert cassette.all_played
    assert connector.client.auth.refreshed == 1


def test_rate_limit_body(connector):
    with recorder.use_cassette("rate_limited.yaml"), pytest.raises(RateLimited) as info:
        connector.api.lists()
    assert info.value.code == "429" and "Max:5 calls per second" in str(info.value)


def test_send_message(connector):
    with recorder.use_cassette("send_message.yaml") as cassette:
        one = connector.send("1", to="email+1@email.email")
        many = connector.send("1", list_id="1")
    assert cassette.all_played
    assert (one.ok, one.recipients, many.recipients) == (True, 1, 3)


def test_transactional(connector):
    message = TransactionalMessage(subject="Hello", html="<p>Hi</p>", text="Hi",
                                   sender=Address(email="app@example.com", name="App"),
                                   to=[Address(email="to@example.com")])
    with recorder.use_cassette("transactional.yaml") as cassette:
        result = connector.send_transactional(message)
    assert cassette.all_played
    assert result.ok and result.message_id == "Message queued"
