"""The connector against real vTiger 8.0.0 answers (cassettes built from the captures)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import vcr

from crmsync.errors import AuthError, RemoteError
from crmsync.model import Change, Cursor
from crmsync.testing.plugin import vcr_config
from crmsync_vtiger import VtigerConnector

CASSETTES = Path(__file__).resolve().parents[3] / "cassettes" / "vtiger"
replay = vcr.VCR(**{**vcr_config(), "record_mode": "none"},
                 cassette_library_dir=str(CASSETTES))


@pytest.fixture
def connect():
    made = []

    def make(**settings):
        values = {"base_url": "http://127.0.0.1:8081", "username": "admin",
                  "access_key": "any-key-the-cassette-scrubs", **settings}
        # a plain client: the cassette holds each answer once, retries would not match
        connector = VtigerConnector(VtigerConnector.Settings(**values), http=httpx.Client())
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.api.auth.forget()  # no logout: it is not in the cassettes
        connector._client.close()


def test_full_read(connect):
    connector = connect(campaigns=["1x6"])
    with replay.use_cassette("full_read.yaml") as cassette:
        pages = list(connector.read(None))
        # vTiger counts 4 contacts; Dan has no address and is left out on purpose
        assert connector.full_read_count() == 3
    assert cassette.all_played
    records = {r.email: r for page in pages for r in page.records}
    assert sorted(records) == ["alice@example.com", "bob@example.com", "carol@example.com"]
    assert records["bob@example.com"].fields["emailoptout"] == "true"
    assert records["alice@example.com"].fields["emailoptout"] == "false"
    assert dict(records["carol@example.com"].memberships) == {"campaign:1x6": ""}
    assert dict(records["bob@example.com"].memberships) == {}
    assert records["carol@example.com"].modified_at == datetime(2026, 11, 28, 5, 58, 27,
                                                                tzinfo=UTC)
    assert connector.reader.skipped_without_email == 1  # Dan has no address


def test_incremental_read_with_sync(connect):
    connector = connect(campaigns=[], incremental="sync")
    cursor = Cursor(at=datetime(2026, 11, 28, 5, 58, 28, tzinfo=UTC))
    with replay.use_cassette("incremental_sync.yaml") as cassette:
        records = [r for page in connector.read(cursor) for r in page.records]
    assert cassette.all_played
    assert {r.email: r.fields["emailoptout"] for r in records} == {
        "alice@example.com": "true", "carol@example.com": "true"}
    assert [r.fields["title"] for r in records if r.email == "carol@example.com"] == ["Revised"]


def test_incremental_read_reports_deletions(connect):
    connector = connect(campaigns=[], incremental="sync")
    cursor = Cursor(at=datetime(2026, 11, 28, 5, 58, 28, tzinfo=UTC))
    with replay.use_cassette("incremental_sync_delete.yaml"):
        records = [r for page in connector.read(cursor) for r in page.records]
    [gone] = [r for r in records if r.deleted]
    assert gone.ids == {"vtiger": "12x3"}
    assert gone.modified_at == datetime(2026, 11, 28, 5, 58, 31, tzinfo=UTC)


def test_writes_revise_skip_no_ops_and_add_to_campaigns(connect):
    connector = connect()
    with replay.use_cassette("write.yaml") as cassette:
        results = connector.write([
            Change(email="carol@example.com", ids={"vtiger": "12x4"},
                   fields={"emailoptout": "true", "title": "Revised"}),
            Change(email="alice@example.com", fields={"emailoptout": "true"}),  # already so
            Change(email="alice@example.com", ids={"vtiger": "12x2"},
                   memberships={"campaign:1x6": ""}),
        ])
    assert cassette.all_played
    assert [(r.ok, r.record_id) for r in results] == [(True, "12x4"), (True, "12x2"),
                                                      (True, "12x2")]


def test_a_dead_session_is_renewed(connect):
    connector = connect()
    with replay.use_cassette("session_lost.yaml") as cassette:
        lists = connector.lists()
    assert cassette.all_played
    assert [(item.id, item.name) for item in lists] == [("campaign:1x6", "Spring Newsletter")]
    assert connector.api.logins == 2


def test_a_refused_key_is_an_auth_error_after_fresh_challenges(connect):
    connector = connect()
    with replay.use_cassette("login_refused.yaml") as cassette, pytest.raises(AuthError) as err:
        connector.api.session()
    assert cassette.all_played
    assert "Access Key" in str(err.value)


def test_real_error_answers_become_clear_errors(connect):
    connector = connect()
    with replay.use_cassette("errors.yaml") as cassette:
        with pytest.raises(RemoteError) as syntax:
            connector.api.call("query", {"query": "select * from Contacts"})
        with pytest.raises(RemoteError) as column:
            connector.api.call("query", {"query": "select nosuchfield from Contacts;"})
        with pytest.raises(RemoteError) as missing:
            connector.api.call("retrieve", {"id": "12x999999"})
        with pytest.raises(RemoteError) as crash:
            connector.api.call("sync", {"modifiedTime": "0", "elementType": "Contacts"})
        with pytest.raises(RemoteError) as mandatory:
            connector.api.call("create", {"elementType": "Contacts", "element":
                                          '{"firstname": "NoLast", "assigned_user_id": "19x1"}'})
    assert cassette.all_played
    assert syntax.value.code == "QUERY_SYNTAX_ERROR"
    assert column.value.code == "ACCESS_DENIED" and "misspelt" in str(column.value)
    assert missing.value.code == "ACCESS_DENIED" and "was deleted" in str(missing.value)
    assert crash.value.status == 500 and crash.value.retryable
    assert mandatory.value.code == "MANDATORY_FIELDS_MISSING"
